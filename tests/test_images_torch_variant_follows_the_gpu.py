"""Invariant: the torch build baked into the trainer follows the host (cuda iff the driver lists a GPU) unless
TORCH_VARIANT says otherwise, and wheels are chosen for the image's interpreter, not the host's.

What it protects: a GPU host building a CPU-only trainer (every trial silently on the CPU), a CPU CI
host downloading gigabytes of CUDA, and a host running Python 3.12 filling the wheelhouse with cp312
wheels the image's Python 3.11 cannot install.
"""

from __future__ import annotations

import itertools

import pytest

from sandbox.build import options, wheelhouse
from sandbox.build.options import TorchVariant


def never_called() -> bool:
    raise AssertionError("an explicit TORCH_VARIANT must not probe the GPU")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("cpu", TorchVariant.CPU), ("CUDA", TorchVariant.CUDA), (" cuda ", TorchVariant.CUDA)],
)
def test_an_explicit_variant_wins_without_probing(value: str, expected: TorchVariant) -> None:
    assert wheelhouse.detect_torch_variant({"TORCH_VARIANT": value}, has_gpu=never_called) is expected


@pytest.mark.parametrize("env", [{}, {"TORCH_VARIANT": ""}, {"TORCH_VARIANT": "auto"}])
@pytest.mark.parametrize(("gpu", "expected"), [(True, TorchVariant.CUDA), (False, TorchVariant.CPU)])
def test_without_a_choice_the_gpu_decides(env: dict[str, str], gpu: bool, expected: TorchVariant) -> None:
    assert wheelhouse.detect_torch_variant(env, has_gpu=lambda: gpu) is expected


def test_an_unknown_variant_is_an_error_not_a_default() -> None:
    with pytest.raises(ValueError, match="rocm"):
        wheelhouse.detect_torch_variant({"TORCH_VARIANT": "rocm"}, has_gpu=lambda: False)


def test_without_nvidia_smi_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert wheelhouse.nvidia_smi_lists_a_gpu() is False


def test_toolchain_comes_with_cuda_unless_chosen() -> None:
    assert options.BuildOptions(torch_variant=TorchVariant.CUDA).wants_toolchain
    assert not options.BuildOptions(torch_variant=TorchVariant.CPU).wants_toolchain
    assert options.BuildOptions(torch_variant=TorchVariant.CPU, toolchain=True).wants_toolchain
    assert not options.BuildOptions(torch_variant=TorchVariant.CUDA, toolchain=False).wants_toolchain


def test_wheels_are_chosen_for_the_image_interpreter_on_this_architecture() -> None:
    args = wheelhouse.pip_target_args("aarch64")
    pairs = list(itertools.pairwise(args))
    major, minor = options.TARGET_PYTHON
    assert ("--python-version", f"{major}.{minor}") in pairs
    assert ("--implementation", "cp") in pairs
    assert ("--abi", f"cp{major}{minor}") in pairs
    assert "--only-binary=:all:" in args
    platforms = [b for a, b in pairs if a == "--platform"]
    assert "manylinux_2_28_aarch64" in platforms and "manylinux2014_aarch64" in platforms
    assert all(p.endswith("_aarch64") for p in platforms)
    # Never a wheel needing a newer glibc than the image's Debian has.
    assert f"manylinux_2_{options.IMAGE_GLIBC_MINOR + 1}_aarch64" not in platforms
