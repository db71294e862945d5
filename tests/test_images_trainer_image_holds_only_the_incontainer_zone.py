"""Invariant: the trainer image holds, of the project, only prepare.py and the in-container trust zone
(sandbox/__init__.py and sandbox/incontainer/), and that zone imports nothing outside itself.

What it protects: the untrusted TRAIN container reading the controller's code (the engine client, the
image builder, preflight with its attack probes, the data pipeline with the corpus generator) as a map
of the defences, and an evaluator that only works on the host because it quietly imports a controller
module the image does not hold. Engine-free: the Dockerfile's COPY lines, the zone's imports in a fresh
interpreter. Marked docker: the same facts read inside the built image.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox import constants as C

ROOT = Path(__file__).resolve().parent.parent
ZONE = ROOT / "sandbox" / "incontainer"
# What Dockerfile.trainer copies of the project (relative to the repository root and to CONTAINER_APP).
TRAINER_SOURCES = ["prepare.py", "sandbox/__init__.py", "sandbox/incontainer/"]
ZONE_MODULES = sorted(f"sandbox.incontainer.{p.stem}" for p in ZONE.glob("*.py") if p.stem != "__init__")
# The controller's half: present on the host, absent from the image.
CONTROLLER_MODULES = [
    "sandbox.engine",
    "sandbox.engine.docker",
    "sandbox.images",
    "sandbox.data",
    "sandbox.preflight",
    "harness",
]


def trainer_copies() -> list[str]:
    """The sources of every COPY in Dockerfile.trainer's last stage, other than from an earlier stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile.trainer").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    last_stage = lines[max(i for i, ln in enumerate(lines) if ln.startswith("FROM ")) :]
    sources: list[str] = []
    for ln in last_stage:
        if ln.startswith("COPY ") and "--from=" not in ln:
            sources += ln.split()[1:-1]
    return sources


def test_the_trainer_image_copies_only_prepare_and_the_incontainer_zone() -> None:
    assert trainer_copies() == TRAINER_SOURCES


def test_the_controller_image_still_copies_all_of_sandbox() -> None:
    """The controller needs the engine code: the trust-zone cut applies to the trainer image only."""
    assert "COPY sandbox/ ${APP_DIR}/sandbox/" in (ROOT / "Dockerfile.controller").read_text()


def test_the_jail_and_the_evaluator_are_started_from_inside_the_zone() -> None:
    """The command lines the controller sends into the containers name files the image holds."""
    assert C.JAIL[-1] == f"{C.CONTAINER_APP}/sandbox/incontainer/jail.py"
    assert (ZONE / "jail.py").is_file()
    assert C.EVALUATOR_MODULE == "sandbox.incontainer.evaluate"
    assert (ROOT / (C.EVALUATOR_MODULE.replace(".", "/") + ".py")).is_file()
    assert not (ROOT / "sandbox" / "evaluate.py").exists()  # no second copy outside the zone


def test_the_zone_imports_nothing_of_the_project_outside_itself() -> None:
    """Every zone module, imported in a fresh interpreter, loads no other project module (prepare aside)."""
    script = (
        "import importlib, json, sys\n"
        f"for m in {ZONE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('sandbox', 'harness'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(ZONE_MODULES) <= set(loaded)  # the check imported what it claims to
    outside = [m for m in loaded if m != "sandbox" and not m.startswith("sandbox.incontainer")]
    assert outside == [], f"the in-container zone imports controller modules: {outside}"


def test_the_evaluator_hashes_every_file_of_the_zone() -> None:
    """The report's source hashes cover the whole zone, so a result names exactly the code that made it."""
    from sandbox.incontainer import evaluate

    zone_files = {p.relative_to(ROOT).as_posix() for p in ZONE.glob("*.py")}
    assert set(evaluate.EVALUATOR_SOURCES) == zone_files | {"sandbox/__init__.py"}
    hashes = evaluate.source_hashes()
    assert set(hashes) == set(evaluate.EVALUATOR_SOURCES) | {"evaluator"}


PROBE = r"""
import importlib, json, os, sys
app = os.environ["APP"]
facts = {"imported": {}, "refused": {}, "files": []}
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    facts["imported"][name] = sys.modules[name].__file__
for name in json.loads(sys.argv[2]):
    try:
        importlib.import_module(name)
        facts["refused"][name] = None
    except ModuleNotFoundError as exc:
        facts["refused"][name] = exc.name
for root, dirs, files in os.walk(app):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    facts["files"] += [os.path.relpath(os.path.join(root, f), app) for f in files]
print("FACTS " + json.dumps(facts))
"""


@pytest.mark.docker
def test_inside_the_image_only_the_zone_imports(
    docker_client: docker.DockerClient, trainer_image: str
) -> None:
    out = docker_client.containers.run(
        trainer_image,
        ["python", "-c", PROBE, json.dumps(ZONE_MODULES), json.dumps(CONTROLLER_MODULES)],
        environment={"APP": C.CONTAINER_APP},
        network_mode="none",
        user=f"{C.CONTAINER_UID}:{C.CONTAINER_GID}",
        remove=True,
        stdout=True,
        stderr=True,
    ).decode()
    line = next(ln for ln in out.splitlines() if ln.startswith("FACTS "))
    facts: dict[str, Any] = json.loads(line.removeprefix("FACTS "))
    assert (
        facts["imported"]["sandbox.incontainer.evaluate"]
        == f"{C.CONTAINER_APP}/sandbox/incontainer/evaluate.py"
    )
    assert set(facts["imported"]) == set(ZONE_MODULES)
    for name in CONTROLLER_MODULES:
        assert facts["refused"][name] is not None, f"{name} imports inside the trainer image"
    expected = {
        "prepare.py",
        "sandbox/__init__.py",
        *(p.relative_to(ROOT).as_posix() for p in ZONE.glob("*.py")),
    }
    assert set(facts["files"]) == expected
