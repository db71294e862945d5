"""Invariant: the controller image can run the harness: its CLI, the sandbox package, the data preparation
and git (the lineage) all work inside it.

What it protects: a controller image that builds but cannot start (a dependency left out of
controller.lock, git missing), found only when someone needs it on a new host.
"""

from __future__ import annotations

import docker
import pytest

from sandbox import constants as C
from sandbox.verdict import ImageMissing

from .conftest import engine_unusable

pytestmark = pytest.mark.docker

CHECK = (
    "set -e; python -m harness --help >/dev/null; git --version; "
    "python -c 'import prepare, sandbox.data.build, sandbox.build.images, sandbox.engine.docker, anthropic, matplotlib, pyarrow; print(\"imports ok\")'"
)


@pytest.fixture(scope="module")
def controller_image(docker_client: docker.DockerClient) -> str:
    from sandbox.engine.docker_config import resolve_image

    try:
        return resolve_image(docker_client, C.CONTROLLER_IMAGE)
    except ImageMissing as exc:
        engine_unusable(str(exc))


def test_harness_cli_imports_and_git_work(docker_client: docker.DockerClient, controller_image: str) -> None:
    out = docker_client.containers.run(
        controller_image, ["-c", CHECK], entrypoint=["sh"], network_mode="none", remove=True, stderr=True
    ).decode()
    assert "git version" in out
    assert "imports ok" in out
