"""Invariant: the image build context holds what the Dockerfiles copy and nothing else.

What it protects: a context that sends .git, runs/ (candidates, logs), .venv, data, caches or a stray
.env to the engine is slow and leaks; a context that misses a file the Dockerfile copies breaks the
build. The check applies the repository's .dockerignore exactly as the Docker SDK does, on a scratch
tree holding one of each kind of file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sandbox.build import images, options

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ("Dockerfile.trainer", "Dockerfile.controller")

NEEDED = [
    "Dockerfile.trainer",
    "Dockerfile.controller",
    "pyproject.toml",
    "prepare.py",
    "sandbox/constants.py",
    "sandbox/__init__.py",
    "sandbox/incontainer/evaluate.py",
    "sandbox/scripts/ensure-engine.sh",
    "harness/cli.py",
    ".build/wheelhouse/trainer/trainer.lock",
    ".build/wheelhouse/trainer/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ".build/wheelhouse/controller/controller.lock",
    ".build/wheelhouse/controller/pip-26.3-py3-none-any.whl",
]
PRIVATE = [
    ".git/config",
    ".env",
    "runs/run-1/trial-0001/train.py",
    ".venv/bin/python",
    ".build/rootfs-abc/rootfs/etc/passwd",
    ".build/install-.venv_bin_python.stamp",
    ".build/wheelhouse/pool/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ".build/wheelhouse/stamp.json",
    "sandbox/__pycache__/constants.cpython-311.pyc",
    "sandbox/incontainer/__pycache__/evaluate.cpython-311.pyc",
    "harness/__pycache__/cli.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    ".mypy_cache/3.11/cache.db",
    "tests/test_something.py",
    "train.py",
    "program.md",
    "data/train/shard_00000.npy",
]


def scratch_tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    for rel in NEEDED + PRIVATE:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    return tmp_path


def test_context_holds_what_the_images_need(tmp_path: Path) -> None:
    sent = images.context_files(scratch_tree(tmp_path))
    assert set(NEEDED) <= sent, set(NEEDED) - sent


def test_context_leaves_out_vcs_runs_envs_caches_and_candidates(tmp_path: Path) -> None:
    sent = images.context_files(scratch_tree(tmp_path))
    assert sent.isdisjoint(PRIVATE), sent & set(PRIVATE)


def test_every_source_a_dockerfile_copies_is_in_the_context() -> None:
    """The real repository: each COPY source (outside the wheelhouse, built later) reaches the engine."""
    sent = images.context_files(ROOT)
    for dockerfile in DOCKERFILES:
        for line in (ROOT / dockerfile).read_text().splitlines():
            match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
            if not match:
                continue
            for source in match.group(1).split():
                if source.startswith(options.WHEELHOUSE_REL):  # written by `make images`, checked above
                    continue
                src = source.rstrip("/")
                assert src in sent or any(f.startswith(src + "/") for f in sent), f"{dockerfile}: {source}"


def test_each_image_copies_only_its_own_wheel_folder() -> None:
    """So a change to the controller's pins never rebuilds the trainer's torch layer."""
    wheelhouse = options.WHEELHOUSE_REL
    trainer, controller = ((ROOT / d).read_text() for d in DOCKERFILES)
    assert f"COPY {wheelhouse}/{options.TRAINER_DIR}/ /wheels/" in trainer
    assert f"COPY {wheelhouse}/{options.CONTROLLER_DIR}/ /wheels/" in controller
    assert f"{wheelhouse}/{options.CONTROLLER_DIR}" not in trainer
    assert f"{wheelhouse}/{options.TRAINER_DIR}" not in controller
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/.build/" in ignored or ".build/" in ignored
