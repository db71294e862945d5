"""A controller killed mid-trial (SIGKILL: no cleanup runs) leaves containers the next start reaps.

Property: everything a trial creates carries the owner's identity (host, pid, start time); when the
owner is dead, the next DockerSandbox start-up removes its containers and volumes, while the
trials of live owners are left alone.
Attack defeated (and accident survived): a candidate that makes its controller die (OOM on the
host, a crash, a power-cut of the loop) would otherwise keep its TRAIN container, and its tmpfs
memory, running after the trial, and every such trial would leak a little more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from sandbox import constants as C
from sandbox.engine.docker import DockerSandbox
from sandbox.engine.reaper import owner_labels

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]


def _owned_by(client: docker.DockerClient, pid: int) -> tuple[list[str], list[str]]:
    selector = {"label": [f"{C.LABEL_APP}={C.LABEL_APP_VALUE}", f"{C.LABEL_OWNER_PID}={pid}"]}
    containers = [c.name for c in client.containers.list(all=True, filters=selector)]
    volumes = [v.name for v in client.volumes.list(filters={"label": selector["label"]})]
    return containers, volumes


def test_orphans_of_a_killed_controller_are_reaped(
    docker_client: docker.DockerClient, trainer_image: str, tiny_data: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, "-m", "harness", "trial", str(ROOT / "tests" / "candidates" / "sleeper.py"),
        "--profile", "tiny", "--time-budget", "120", "--data-dir", str(tiny_data),
        "--trial-dir", str(tmp_path / "orphaned"), "--json",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    controller = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        selector = {"label": [f"{C.LABEL_OWNER_PID}={controller.pid}", f"{C.LABEL_ROLE}=train"]}
        while not docker_client.containers.list(filters=selector):  # running TRAIN containers only
            assert controller.poll() is None, controller.stdout.read().decode() if controller.stdout else ""
            assert time.monotonic() < deadline, "the controller never started TRAIN"
            time.sleep(0.2)
        controller.send_signal(signal.SIGKILL)
        controller.wait(timeout=30)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()

    containers, volumes = _owned_by(docker_client, controller.pid)
    assert any(name.endswith("-train") for name in containers), "SIGKILL should leave the TRAIN container"
    assert volumes, "SIGKILL should leave the tmpfs volumes"

    # A live owner's trial is not touched by the same reaping pass.
    mine = docker_client.volumes.create(
        name=f"ar-test-live-owner-{os.getpid()}",
        labels={C.LABEL_APP: C.LABEL_APP_VALUE, C.LABEL_TRIAL: "live", C.LABEL_ROLE: "out"} | owner_labels(),
    )
    try:
        DockerSandbox(client=docker_client, data_dir=tiny_data)  # start-up reaps
        assert _owned_by(docker_client, controller.pid) == ([], [])
        docker_client.volumes.get(mine.name)  # still there: raises NotFound if it was reaped
    finally:
        mine.remove(force=True)
