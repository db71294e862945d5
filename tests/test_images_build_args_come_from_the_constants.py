"""Invariant: `build_images` passes the images the names sandbox/constants.py defines, builds the controller
on the exact trainer runtime it just built, and adds a compiler only where torch.compile needs one.

What it protects: an image whose uid, app folder or mount points drift from what the controller
mounts and checks; a controller built on a stale trainer (two torch builds on one host); a CUDA
trainer without the C compiler triton needs, or a CPU trainer carrying one it never uses. Checked
with the engine, base and wheelhouse steps replaced by recorders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.build import images, options
from sandbox.build.options import BuildOptions, TorchVariant
from sandbox.incontainer import fileio


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    builds: list[dict[str, Any]] = []

    def fake_build(client: object, **kwargs: Any) -> str:
        builds.append(kwargs)
        return f"sha256:{len(builds):064d}"

    for folder, lock in (
        (options.TRAINER_DIR, options.TRAINER_LOCK),
        (options.CONTROLLER_DIR, options.CONTROLLER_LOCK),
    ):
        path = tmp_path / options.WHEELHOUSE_REL / folder / lock
        path.parent.mkdir(parents=True)
        path.write_text(f"{folder} lock\n")
    monkeypatch.setattr(images, "build_image", fake_build)
    monkeypatch.setattr(images, "build_wheelhouse", lambda *a, **k: None)
    monkeypatch.setattr(images, "ensure_base_image", lambda client, base: base)
    return builds


def build(tmp_path: Path, base: str = options.DEFAULT_BASE_IMAGE, **options: Any) -> dict[str, str]:
    opts = BuildOptions(context=tmp_path, base_image=base, **options)
    return images.build_images(opts, client=object())


def by_tag(recorded: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    (build,) = [b for b in recorded if b["tag"] == tag]
    return build


def test_trainer_args_are_the_constants(recorded: list[dict[str, Any]], tmp_path: Path) -> None:
    digests = build(tmp_path, torch_variant=TorchVariant.CPU)
    trainer = by_tag(recorded, C.TRAINER_IMAGE)
    assert trainer["target"] == "trainer"
    assert (trainer["dockerfile"], trainer["tag"]) == ("Dockerfile.trainer", C.TRAINER_IMAGE)
    args = trainer["buildargs"]
    assert args["APP_DIR"] == C.CONTAINER_APP and args["WORKSPACE"] == C.CONTAINER_WORKDIR
    assert (args["APP_UID"], args["APP_GID"]) == (str(C.CONTAINER_UID), str(C.CONTAINER_GID))
    assert set(args["MOUNTPOINTS"].split()) == {
        C.CONTAINER_DATA,
        C.CONTAINER_OUT,
        C.CONTAINER_ARTIFACT,
        C.CONTAINER_REPORT_DIR,
    }
    assert args["BASE_IMAGE"] == options.DEFAULT_BASE_IMAGE
    lock = tmp_path / options.WHEELHOUSE_REL / options.TRAINER_DIR / options.TRAINER_LOCK
    assert trainer["labels"] == {
        options.LABEL_TORCH_VARIANT: "cpu",
        options.LABEL_LOCK_SHA256: fileio.sha256_file(lock),
    }
    assert digests["trainer"] == f"sha256:{recorded.index(trainer) + 1:064d}"


def test_controller_is_built_on_the_runtime_just_built(
    recorded: list[dict[str, Any]], tmp_path: Path
) -> None:
    digests = build(tmp_path, torch_variant=TorchVariant.CPU)
    runtime = by_tag(recorded, options.RUNTIME_IMAGE)
    controller = by_tag(recorded, C.CONTROLLER_IMAGE)
    assert (runtime["dockerfile"], runtime["target"]) == ("Dockerfile.trainer", "runtime")
    assert runtime["buildargs"] == by_tag(recorded, C.TRAINER_IMAGE)["buildargs"]  # same layers, cached
    assert controller["dockerfile"] == "Dockerfile.controller"
    assert controller["buildargs"]["RUNTIME_IMAGE"] == f"sha256:{recorded.index(runtime) + 1:064d}"
    assert recorded.index(runtime) < recorded.index(controller)
    assert digests["controller"] == f"sha256:{recorded.index(controller) + 1:064d}"


def test_trainer_only_builds_one_image(recorded: list[dict[str, Any]], tmp_path: Path) -> None:
    assert set(build(tmp_path, trainer_only=True)) == {"trainer"}
    assert [b["tag"] for b in recorded] == [C.TRAINER_IMAGE]


@pytest.mark.parametrize(
    ("variant", "base", "expected"),
    [
        (TorchVariant.CPU, options.DEFAULT_BASE_IMAGE, set()),
        (TorchVariant.CUDA, options.DEFAULT_BASE_IMAGE, set(options.TOOLCHAIN_PACKAGES)),
        (TorchVariant.CUDA, C.BASE_IMAGE_LOCAL, {*options.TOOLCHAIN_PACKAGES, options.DEBIAN_PYTHON_HEADERS}),
    ],
)
def test_a_compiler_comes_with_cuda_and_python_headers_with_debian_python(
    recorded: list[dict[str, Any]], tmp_path: Path, variant: TorchVariant, base: str, expected: set[str]
) -> None:
    build(tmp_path, base=base, torch_variant=variant, trainer_only=True)
    assert set(recorded[0]["buildargs"]["APT_PACKAGES"].split()) == expected
