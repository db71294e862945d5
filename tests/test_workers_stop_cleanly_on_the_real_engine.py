"""On the real engine, `python -m harness run --workers 2` runs two trials at once, each worker's
containers (holder, TRAIN, EVAL) on its own cpuset, and SIGTERM stops both workers cleanly: the
controller exits 130, every container and volume it created is removed, both leases are back in
the table, and no ledger row was written for the interrupted trials (the next `run` re-runs them).

Without the run's cancel event reaching the engine (`Sandbox.run_trial(spec, cancel)`, set by the
main thread on SIGTERM, harness/loop/pool.py) the controller would wait for both trials to end by
themselves, or, if it just exited, leave their containers running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.records.chain import Ledger
from sandbox import constants as C
from tests.conftest import CANDIDATES
from tests.test_loop_survives_sigkill_on_the_real_engine import containers_of, describe, volumes_of

if TYPE_CHECKING:
    import docker

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 150.0  # a bound: until both TRAIN containers run
STOP_TIMEOUT_S = 90.0  # a bound: SIGTERM to exit, cleanup of six containers included

CONFIG = """\
run_tag = "workers-sigterm"
workers = 2
max_trials = 2
[judge]
baseline_repeats = 2
min_compute_share = 0.0  # stopping is tested here, not the host: a loaded one must not pause the run
[limits]
time_budget_s = 60
kill_grace_s = 2
mem_limit_mb = 1024
eval_mem_limit_mb = 2048
output_limit_mb = 16
"""


@pytest.fixture
def owners(docker_client: docker.DockerClient) -> Iterator[set[int]]:
    pids: set[int] = set()
    yield pids
    for container in containers_of(docker_client, pids):
        container.remove(force=True, v=True)
    for volume in volumes_of(docker_client, pids):
        volume.remove(force=True)


@pytest.mark.docker
def test_sigterm_stops_both_workers_and_leaves_nothing(
    docker_client: docker.DockerClient, trainer_image: str, tiny_data: Path, tmp_path: Path, owners: set[int]
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two workers need two CPUs for their cpusets")
    (tmp_path / "autoresearch.toml").write_text(CONFIG, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env |= {"HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}  # a private lease table
    run_dir = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "harness",
        "run",
        "--config",
        str(tmp_path / "autoresearch.toml"),
        "--backend",
        "docker",
        "--profile",
        "tiny",
        "--agent",
        "replay",
        "--replay-dir",
        str(CANDIDATES / "loop_sigkill"),
        "--train-py",
        str(CANDIDATES / "sleeper.py"),  # the baseline runs sleep: both TRAIN containers stay up
        "--run-dir",
        str(run_dir),
        "--data-dir",
        str(tiny_data),
    ]
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    owners.add(proc.pid)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            trains = [
                c
                for c in containers_of(docker_client, {proc.pid})
                if c.labels.get(C.LABEL_ROLE) == "train" and c.status == "running"
            ]
            if len(trains) == 2:
                break
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, (
                f"two TRAIN containers never ran at once: {log.read_text()[-4000:]}"
            )
            time.sleep(0.1)
        cpusets: dict[str, set[str]] = {}
        for container in containers_of(docker_client, {proc.pid}):
            container.reload()
            trial = container.labels[C.LABEL_TRIAL]
            cpusets.setdefault(trial, set()).add(container.attrs["HostConfig"]["CpusetCpus"])
        assert all(len(sets) == 1 for sets in cpusets.values()), cpusets
        assert len({next(iter(s)) for s in cpusets.values()}) == 2, (
            f"each worker on its own cpuset: {cpusets}"
        )
        interrupted = sorted(cpusets)

        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=STOP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    tail = log.read_text(errors="replace")[-4000:]
    assert rc == 130, tail
    assert containers_of(docker_client, {proc.pid}) == [], describe(docker_client, {proc.pid})
    assert volumes_of(docker_client, {proc.pid}) == [], describe(docker_client, {proc.pid})
    table = json.loads((tmp_path / "home" / ".cache" / "autoresearch" / "leases.json").read_text())
    assert table["leases"] == [], table
    recorded = {r.trial_id for r in Ledger(run_dir / "ledger.jsonl").records()}
    assert not recorded & set(interrupted), "an interrupted trial got a ledger row"
    for trial in interrupted:
        assert (run_dir / "trials" / trial / "trial.json").is_file(), "the next run re-runs it"
