"""A fork bomb in TRAIN hits the pids limit and dies with its container; the host keeps working.

Property: the number of processes in TRAIN never exceeds `pids_limit` (the engine's own count, sampled
while the bomb runs), the trial ends by the controller's clock, no process of the container survives
it, and the host can still start processes during and after.
Attack defeated: exhausting the host's process table to take down the controller and the other
workers, or leaving processes behind to keep computing after the trial.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

PIDS = 48


def test_fork_bomb_is_contained(
    docker_sandbox: DockerSandbox, docker_client: docker.DockerClient, make_spec: Callable[..., TrialSpec]
) -> None:
    spec = make_spec("fork_bomb", pids_limit=PIDS, time_budget_s=4, kill_grace_s=1)
    seen: list[int] = []
    host_ok: list[bool] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for container in docker_client.containers.list(
                filters={"label": [f"{C.LABEL_TRIAL}={spec.trial_id}", f"{C.LABEL_ROLE}=train"]}
            ):
                try:
                    stats = container.stats(stream=False, one_shot=True)
                except docker.errors.APIError:
                    continue
                seen.append(int((stats.get("pids_stats") or {}).get("current") or 0))
                host_ok.append(subprocess.run(["true"], check=False, timeout=10).returncode == 0)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        verdict = docker_sandbox.run_trial(spec)
    finally:
        done.set()
        sampler.join(timeout=30)

    assert verdict.status is Status.TIMEOUT
    assert seen, "the sampler never saw the TRAIN container"
    assert max(seen) <= PIDS
    assert max(seen) >= PIDS // 2  # the bomb did run into the limit
    assert host_ok and all(host_ok)
    assert subprocess.run(["true"], check=False).returncode == 0
    container_id = json.loads((spec.trial_dir / C.TRAIN_STATE_FILE).read_text())["Id"]
    assert not _host_processes_in(container_id)


def _host_processes_in(container_id: str) -> list[int]:
    """Host pids whose cgroup names the container (runc: its processes are host processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if container_id in (proc / "cgroup").read_text():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
