"""Invariant: the trainer image holds no test suites or test binaries, and torch's C++ headers only
beside a C compiler that could use them; what TRAIN and EVAL run is all there.

What it protects: image size, and so the time every `make images`, pull and first container start
pays for it (the cpu image lost about 230 MB, a fifth, to this), without losing anything a trial
uses. torch's own `torch/test` and `torch/bin/test_*` are C++ gtest binaries and other packages'
`tests` folders are their own suites; nothing imports them. The headers serve only torch.compile's C++
backend and cpp_extension, which need a compiler: the cuda image (with gcc) keeps them.
Checked inside the built image; that it still trains and evaluates is what the sandbox tests prove.
"""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

pytestmark = pytest.mark.docker

PROBE = r"""
import json, os, shutil, sysconfig
site = sysconfig.get_paths()["purelib"]
tests = []
for root, dirs, files in os.walk(site):
    if root == site and "torch" in dirs:
        dirs.remove("torch")  # torch keeps its `tests` folders (importable); torch/test is checked apart
    tests += [os.path.join(root, d) for d in dirs if d == "tests"]
bin_dir = os.path.join(site, "torch", "bin")
print("FACTS " + json.dumps({
    "torch_test": os.path.exists(os.path.join(site, "torch", "test")),
    "tests_dirs": tests,
    "bin": sorted(os.listdir(bin_dir)) if os.path.isdir(bin_dir) else [],
    "include": os.path.isdir(os.path.join(site, "torch", "include")),
    "compiler": shutil.which("gcc") is not None or shutil.which("cc") is not None,
}))
"""


@pytest.fixture(scope="module")
def facts(docker_client: docker.DockerClient, trainer_image: str) -> dict[str, Any]:
    out = docker_client.containers.run(
        trainer_image, ["python", "-c", PROBE], network_mode="none", remove=True, stdout=True, stderr=True
    ).decode()
    line = next(ln for ln in out.splitlines() if ln.startswith("FACTS "))
    result: dict[str, Any] = json.loads(line.removeprefix("FACTS "))
    return result


def test_no_test_suites_or_test_binaries(facts: dict[str, Any]) -> None:
    assert facts["torch_test"] is False
    assert facts["tests_dirs"] == []
    assert not [
        f for f in facts["bin"] if f.startswith("test_") or f.endswith("Test") or f.startswith("protoc")
    ]
    assert "torch_shm_manager" in facts["bin"]  # torch.multiprocessing's file_system sharing needs it


def test_cpp_headers_only_beside_a_compiler(facts: dict[str, Any]) -> None:
    assert facts["include"] == facts["compiler"]
