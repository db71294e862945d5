"""Invariant: the built trainer image runs as uid/gid 65532, holds no candidate code, keeps the trusted code
read-only to that user, has no pip, and imports everything TRAIN and EVAL need.

What it protects: a candidate running as root or able to overwrite prepare.py / the evaluator (and
so its own score); a train.py baked into the image that runs when the mount is missing; a pip that
lets a candidate install tools; an image whose evaluator cannot even import. These are facts about
the image itself, observed from inside one container started without the runtime hardening (no
read-only root filesystem), so file permissions are what is tested, not the mount flags.
"""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from sandbox import constants as C
from sandbox.build import images, options
from sandbox.incontainer import fileio

pytestmark = pytest.mark.docker

PROBE = r"""
import importlib.util, json, os, sys, sysconfig
facts = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
         "env": {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "HOME")}}
found = []
for top in ("/workspace", "/opt", "/usr", "/tmp", "/data", "/out", "/etc", "/root", "/home", "/srv"):
    for root, dirs, files in os.walk(top):
        found += [os.path.join(root, f) for f in files if f == "train.py"]
facts["train_py"] = found
writable = {}
for d in (os.environ["APP"], os.environ["APP"] + "/sandbox", os.environ["APP"] + "/sandbox/incontainer", sysconfig.get_paths()["purelib"], "/opt/venv/bin", "/workspace"):
    try:
        with open(os.path.join(d, "probe.txt"), "x"):
            pass
        writable[d] = True
    except OSError:
        writable[d] = False
facts["writable"] = writable
facts["pip"] = importlib.util.find_spec("pip") is not None
facts["ensurepip"] = importlib.util.find_spec("ensurepip") is not None
import torch, numpy, tokenizers, pydantic, prepare, sandbox.incontainer.evaluate, sandbox.incontainer.constants
facts["torch"] = torch.__version__
facts["prepare_file"] = prepare.__file__
facts["evaluator_file"] = sandbox.incontainer.evaluate.__file__
facts["pyc"] = os.path.exists(os.path.join(os.environ["APP"], "__pycache__", "prepare.cpython-%d%d.pyc" % sys.version_info[:2]))
print("FACTS " + json.dumps(facts))
"""


@pytest.fixture(scope="module")
def facts(docker_client: docker.DockerClient, trainer_image: str) -> dict[str, Any]:
    out = docker_client.containers.run(
        trainer_image,
        ["python", "-c", PROBE],
        environment={"APP": C.CONTAINER_APP},
        network_mode="none",
        remove=True,
        stdout=True,
        stderr=True,
    ).decode()
    line = next(ln for ln in out.splitlines() if ln.startswith("FACTS "))
    result: dict[str, Any] = json.loads(line.removeprefix("FACTS "))
    return result


def test_runs_as_the_unprivileged_sandbox_user(facts: dict[str, Any]) -> None:
    assert (facts["uid"], facts["gid"]) == (C.CONTAINER_UID, C.CONTAINER_GID)
    assert 0 not in facts["groups"]
    assert facts["cwd"] == C.CONTAINER_WORKDIR


def test_no_candidate_code_is_baked_in(facts: dict[str, Any]) -> None:
    assert facts["train_py"] == []


def test_trusted_code_and_dependencies_are_read_only_to_the_candidate(facts: dict[str, Any]) -> None:
    assert facts["writable"], "the probe tested nothing"
    assert not any(facts["writable"].values()), facts["writable"]


def test_no_package_installer_is_left(facts: dict[str, Any]) -> None:
    assert facts["pip"] is False
    assert facts["ensurepip"] is False


def test_train_and_eval_imports_resolve_to_the_baked_app(facts: dict[str, Any]) -> None:
    assert facts["torch"].startswith(options.TORCH_VERSION)
    assert facts["prepare_file"] == f"{C.CONTAINER_APP}/prepare.py"
    assert facts["evaluator_file"] == f"{C.CONTAINER_APP}/sandbox/incontainer/evaluate.py"
    assert facts["pyc"], "the app's bytecode is compiled at build time (read-only root at run time)"
    assert facts["env"] == {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": C.CONTAINER_APP,
        "HOME": "/tmp",
    }


def test_labels_name_the_torch_build_and_the_lock_inside(
    facts: dict[str, Any], docker_client: docker.DockerClient, trainer_image: str
) -> None:
    labels = docker_client.images.get(trainer_image).labels
    variant = labels[options.LABEL_TORCH_VARIANT]
    assert facts["torch"].endswith("+cpu") == (variant == options.TorchVariant.CPU.value)
    lock = options.REPO_ROOT / options.WHEELHOUSE_REL / options.TRAINER_DIR / options.TRAINER_LOCK
    if lock.exists():  # the image may have been built from another checkout; then only the format is checked
        assert labels[options.LABEL_LOCK_SHA256] == fileio.sha256_file(lock)
    assert len(labels[options.LABEL_LOCK_SHA256]) == 64


def test_image_digest_is_the_content_id(docker_client: docker.DockerClient, trainer_image: str) -> None:
    digest = images.image_digest(C.TRAINER_IMAGE, docker_client)
    assert digest == trainer_image and digest.startswith("sha256:") and len(digest) == 71
