"""Invariant: the images install exactly the pinned, hash-locked wheels, and torch is the build its variant names.

What it protects: a loose requirement (`numpy>=2`) makes two builds of the "same" image differ, so two
trials' numbers stop being comparable; a lock without hashes lets a swapped wheel in; a CPU host that
resolves PyPI's default torch pulls gigabytes of CUDA, and a GPU host given the CPU build trains on
the CPU without saying so. All of this is checked without an engine or a network.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sandbox.build import options, wheelhouse
from sandbox.build.options import LockedWheel, TorchVariant, WheelhouseError
from sandbox.incontainer import fileio

ROOT = Path(__file__).resolve().parent.parent


def wheel(name: str, version: str, sha: str = "0" * 64) -> LockedWheel:
    return LockedWheel(name=name, version=version, sha256=sha, filename=f"{name}-{version}-py3-none-any.whl")


def test_every_trainer_and_controller_requirement_is_an_exact_pin() -> None:
    for path in (options.TRAINER_REQUIREMENTS, options.CONTROLLER_REQUIREMENTS):
        pins = wheelhouse.read_pins(path)
        assert pins, f"{path} pins nothing"
        assert all(version[0].isdigit() for version in pins.values()), pins


def test_torch_is_pinned_only_by_the_variant_never_in_the_requirement_files() -> None:
    for path in (options.TRAINER_REQUIREMENTS, options.CONTROLLER_REQUIREMENTS):
        assert "torch" not in wheelhouse.read_pins(path)
    assert wheelhouse.torch_requirement(TorchVariant.CPU) == f"torch=={options.TORCH_VERSION}+cpu"
    cuda = wheelhouse.torch_requirement(TorchVariant.CUDA)
    assert cuda.startswith(f"torch=={options.TORCH_VERSION},") and f"!={options.TORCH_VERSION}+cpu" in cuda


def test_the_image_torch_is_the_version_pyproject_pins() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={options.TORCH_VERSION}" in deps


def test_controller_requirements_cover_every_runtime_dependency_of_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        wheelhouse.normalize(d.split(">")[0].split("=")[0].split("<")[0].split("[")[0])
        for d in project["dependencies"]
    }
    pinned = set(wheelhouse.read_pins(options.TRAINER_REQUIREMENTS)) | set(
        wheelhouse.read_pins(options.CONTROLLER_REQUIREMENTS)
    )
    assert names - pinned - {"torch"} == set(), "pyproject.toml depends on packages no image installs"


def test_the_controller_image_ray_is_the_version_the_ray_extra_pins() -> None:
    """The controller image is a Ray driver (`run --ray`); a driver of another Ray version than the
    nodes' (installed from the `ray` extra) is refused by the cluster."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert extra == [f"ray=={wheelhouse.read_pins(options.CONTROLLER_REQUIREMENTS)['ray']}"]


@pytest.mark.parametrize(
    "line", ["numpy>=2.0", "numpy", "numpy==2.*", "numpy~=2.4", "numpy==2.4; python_version>'3'"]
)
def test_a_loose_requirement_is_refused(tmp_path: Path, line: str) -> None:
    req = tmp_path / "req.txt"
    req.write_text(f"# comment\n{line}\n")
    with pytest.raises(WheelhouseError, match="exact"):
        wheelhouse.read_pins(req)


def test_a_package_pinned_twice_is_refused(tmp_path: Path) -> None:
    req = tmp_path / "req.txt"
    req.write_text("typing_extensions==4.16.0\ntyping-extensions==4.16.0\n")
    with pytest.raises(WheelhouseError, match="twice"):
        wheelhouse.read_pins(req)


def test_lock_lines_carry_the_sha256_pip_will_require(tmp_path: Path) -> None:
    sha = "ab" * 32
    digest = wheelhouse.write_lock(tmp_path / "x.lock", [wheel("numpy", "2.4.6", sha)], "header line")
    text = (tmp_path / "x.lock").read_text()
    assert text.splitlines() == ["# header line", f"numpy==2.4.6 --hash=sha256:{sha}"]
    assert digest == fileio.sha256_file(tmp_path / "x.lock")


def test_report_parsing_names_versions_and_hashes_every_wheel(tmp_path: Path) -> None:
    plus = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    plus.write_bytes(b"not really a wheel")
    report = {
        "install": [
            {
                "download_info": {
                    "url": "file:///w/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
                },
                "metadata": {"name": "Torch", "version": "2.13.0+cpu"},
            },
            {
                "download_info": {
                    "url": "https://x/Typing_Extensions-4.16.0-py3-none-any.whl",
                    "archive_info": {"hashes": {"sha256": "cd" * 32}},
                },
                "metadata": {"name": "Typing_Extensions", "version": "4.16.0"},
            },
        ]
    }
    locked = wheelhouse.wheels_from_report(report, tmp_path)
    assert [(w.name, w.version) for w in locked] == [("torch", "2.13.0+cpu"), ("typing-extensions", "4.16.0")]
    assert locked[0].filename == plus.name  # %2B decoded: the file the prune step must keep
    assert locked[0].sha256 == fileio.sha256_file(plus)  # no hash in the report: computed from the file
    assert locked[1].sha256 == "cd" * 32


def test_two_versions_of_one_package_across_locks_are_refused() -> None:
    assert [
        w.name for w in wheelhouse.merge_locks([wheel("a", "1")], [wheel("a", "1"), wheel("b", "2")])
    ] == [
        "a",
        "b",
    ]
    with pytest.raises(WheelhouseError, match="both"):
        wheelhouse.merge_locks([wheel("a", "1")], [wheel("a", "2")])


def test_a_lock_whose_torch_is_not_the_variant_is_refused() -> None:
    cpu_lock = [wheel("torch", "2.13.0+cpu"), wheel("numpy", "2.4.6")]
    cuda_lock = [wheel("torch", "2.13.0"), wheel("nvidia-cublas-cu12", "12.9.1.4")]
    wheelhouse.check_variant(cpu_lock, TorchVariant.CPU)
    wheelhouse.check_variant(cuda_lock, TorchVariant.CUDA)
    with pytest.raises(WheelhouseError, match="cpu"):
        wheelhouse.check_variant(cuda_lock, TorchVariant.CPU)
    with pytest.raises(WheelhouseError, match="cuda"):
        wheelhouse.check_variant(cpu_lock, TorchVariant.CUDA)
    with pytest.raises(WheelhouseError, match="CUDA libraries"):
        wheelhouse.check_variant([wheel("torch", "2.13.0")], TorchVariant.CUDA)
    with pytest.raises(WheelhouseError, match="no torch"):
        wheelhouse.check_variant([wheel("numpy", "2.4.6")], TorchVariant.CPU)
