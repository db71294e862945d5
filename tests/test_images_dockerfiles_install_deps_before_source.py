"""Invariant: the Dockerfiles install locked dependencies before any project source, agree with
sandbox/constants.py, and never bake the candidate into the trainer.

What it protects: a source edit that reinstalls torch (minutes per build instead of seconds); an
install that can reach an index or skip hash checks; a trainer whose user, app folder or mount points
drift from the constants the controller mounts and checks; a train.py baked into the image that a
mount failure would silently fall back to.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sandbox import constants as C
from sandbox.build import options

ROOT = Path(__file__).resolve().parent.parent


def instructions(dockerfile: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def stages(dockerfile: str) -> list[list[str]]:
    out: list[list[str]] = []
    for ins in instructions(dockerfile):
        if ins.startswith("FROM "):
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def arg_defaults(dockerfile: str) -> dict[str, str]:
    found = {}
    for ins in instructions(dockerfile):
        match = re.match(r'ARG (\w+)=("?)(.*)\2$', ins)
        if match:
            found[match.group(1)] = match.group(3)
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile.trainer", "Dockerfile.controller"])
def test_dependencies_come_from_the_locked_wheelhouse_only(dockerfile: str) -> None:
    installs = [i for i in instructions(dockerfile) if re.search(r'pip"? install', i)]
    assert installs
    for ins in installs:
        for flag in ("--no-index", "--require-hashes", "--no-deps", "--find-links /wheels"):
            assert flag in ins, f"{dockerfile}: {flag} missing in {ins}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.trainer", "Dockerfile.controller"])
def test_no_project_source_is_copied_before_the_dependencies_are_installed(dockerfile: str) -> None:
    deps, *later = stages(dockerfile)
    assert not [i for i in deps if i.startswith("COPY") and "/wheels" not in i], "source in the deps stage"
    rest = [i for stage in later for i in stage]
    copy_deps = next(n for n, i in enumerate(rest) if i.startswith("COPY --from=deps "))
    first_source = next(n for n, i in enumerate(rest) if i.startswith("COPY") and "--from" not in i)
    assert copy_deps < first_source


def test_the_trainer_source_sits_in_its_own_last_stage() -> None:
    """The `runtime` stage (the controller's parent) holds no source, so source edits never reach it."""
    names = [stage[0].split()[-1] for stage in stages("Dockerfile.trainer")]
    assert names == ["deps", "runtime", "trainer"]
    runtime, trainer = stages("Dockerfile.trainer")[1:]
    assert not [i for i in runtime if i.startswith("COPY") and "--from=deps" not in i]
    assert trainer[0] == "FROM runtime AS trainer"


def test_the_controller_is_built_on_the_trainer_runtime_and_shares_its_torch_layer() -> None:
    """FROM the trainer's runtime stage (by the ID sandbox.build passes): never a second torch install or copy."""
    controller = stages("Dockerfile.controller")
    assert [s[0] for s in controller] == ["FROM ${RUNTIME_IMAGE} AS deps", "FROM ${RUNTIME_IMAGE}"]
    assert arg_defaults("Dockerfile.controller")["RUNTIME_IMAGE"] == options.RUNTIME_IMAGE
    everything = " ".join(instructions("Dockerfile.controller"))
    assert "trainer.lock" not in everything and "/opt/venv /opt/venv" not in everything
    assert "USER root" in controller[-1]


def test_trainer_defaults_match_the_constants() -> None:
    args = arg_defaults("Dockerfile.trainer")
    assert args["APP_DIR"] == C.CONTAINER_APP
    assert (int(args["APP_UID"]), int(args["APP_GID"])) == (C.CONTAINER_UID, C.CONTAINER_GID)
    assert args["WORKSPACE"] == C.CONTAINER_WORKDIR
    assert set(args["MOUNTPOINTS"].split()) == {
        C.CONTAINER_DATA,
        C.CONTAINER_OUT,
        C.CONTAINER_ARTIFACT,
        C.CONTAINER_REPORT_DIR,
    }
    runtime = stages("Dockerfile.trainer")[-1]
    assert "USER ${APP_UID}:${APP_GID}" in runtime
    assert "WORKDIR ${WORKSPACE}" in runtime
    assert C.CONTAINER_CANDIDATE == f"{C.CONTAINER_WORKDIR}/{C.CANDIDATE_FILE}"


def test_trainer_never_copies_candidate_code() -> None:
    copies = [i for i in instructions("Dockerfile.trainer") if i.startswith(("COPY", "ADD"))]
    assert not [i for i in copies if "train.py" in i or re.search(r"COPY\s+\.\s", i) or i.startswith("ADD")]
    assert [i.split()[1] for i in copies if "--from" not in i] == [
        ".build/wheelhouse/trainer/",
        "prepare.py",
        "sandbox/__init__.py",
        "sandbox/incontainer/",
    ]


def test_trainer_runtime_environment() -> None:
    env = " ".join(i for stage in stages("Dockerfile.trainer")[1:] for i in stage if i.startswith("ENV "))
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PYTHONPATH=${APP_DIR}", "HOME=/tmp"):
        assert setting in env
    assert "PATH=/opt/venv/bin:" in env
