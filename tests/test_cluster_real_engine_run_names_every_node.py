"""The issue's acceptance run, on the real engine: `harness run --ray` over a head and two worker
nodes exits 0, every run of every ledger row names the node it ran on, both nodes appear, the
dispatch journal has every dispatch accepted once, and `verify-ledger` passes.

Needs the Docker engine and the built images (marked docker) and ray (the `ray_cluster` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.records.chain import Ledger
from sandbox.cluster.journal import journal_summary
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.docker


def test_two_node_run_through_the_real_engine(
    ray_cluster: LocalCluster, trainer_image: str, tiny_data: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    env = os.environ | ray_cluster.env()
    harness = [sys.executable, "-m", "harness"]
    done = subprocess.run(
        [
            *harness,
            "run",
            "--profile",
            "tiny",
            "--agent",
            "offline",
            "--max-trials",
            "2",
            "--workers",
            "2",
            "--ray",
            ray_cluster.address,
            "--run-dir",
            str(run_dir),
            "--data-dir",
            str(tiny_data),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    records = Ledger(run_dir / "ledger.jsonl").records()
    assert records
    names = {run.node.node_name for r in records for run in r.runs if run.node is not None}
    assert all(run.node is not None for r in records for run in r.runs), "every run names its node"
    assert names == set(ray_cluster.nodes), f"runs landed on {names}"
    assert all(run.images.get("trainer") == trainer_image for r in records for run in r.runs)
    # One CPU per node with the default starvation rule: the trial's own pre-warming EVAL shares TRAIN's
    # CPU and is counted as the trial's (sandbox/compute.py TaskGroup), so runs are results, not starved.
    shares = [run.compute_share for r in records for run in r.runs]
    assert all(s is not None and s >= 0.85 for s in shares), f"compute shares {shares}"
    assert all(run.compute and run.compute.get("prewarm_cpu_s", 0) > 0 for r in records for run in r.runs)
    # Every accepted dispatch is a run of a row, or a starved attempt of one (re-run, never judged).
    runs = sum(len(r.runs) + len(r.starved) for r in records)
    assert journal_summary(run_dir) == {"accepted": runs}
    check = subprocess.run(
        [*harness, "verify-ledger", str(run_dir)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
