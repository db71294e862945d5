"""The real baseline train.py scores through the full sandbox, under runc and under gVisor (runsc).

Property: the hardened TRAIN container (no network, read-only root, non-root uid, capped memory,
output and pids) leaves an honest candidate able to train for the tiny profile's budget, stop at the
controller's SIGTERM, export model.pt2, and get a finite val_bpb from the evaluator in the EVAL
container; the same holds under the gVisor runtime, the stronger isolation tier.
Attack defeated: none directly; this is the guard against a sandbox so tight it only rejects, which
would make every security test above pass for the wrong reason.
"""

from __future__ import annotations

import math
from pathlib import Path

import docker
import pytest

from sandbox.constants import Status
from sandbox.engine.docker import DockerSandbox
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialSpec

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BASELINE = Path(__file__).resolve().parents[1] / "train.py"


# The property is that the sandbox lets an honest candidate score, not how fast the baseline exports:
# a long grace keeps a loaded 2-core CI machine (a 15 s step finishing after SIGTERM, then the export)
# from turning it into a timeout. The budget itself is the profile's.
GRACE_S = 120


def _spec(tmp_path: Path, name: str, **overrides: object) -> TrialSpec:
    return TrialSpec(
        trial_id=f"baseline-{name}",
        candidate=BASELINE,
        trial_dir=tmp_path / name,
        profile="tiny",
        limits=Limits.for_profile("tiny", kill_grace_s=GRACE_S, **overrides),
        min_compute_share=0.0,  # likewise: a loaded machine must not make it `starved` (measured all the same)
    )


def test_baseline_scores_under_runc(docker_sandbox: DockerSandbox, tmp_path: Path) -> None:
    verdict = docker_sandbox.run_trial(_spec(tmp_path, "runc"))
    assert verdict.status is Status.OK, verdict.reason
    assert verdict.val_bpb is not None and math.isfinite(verdict.val_bpb) and verdict.val_bpb > 0
    assert verdict.report is not None and verdict.report.val_bpb == verdict.val_bpb
    assert verdict.peak_memory_gb is not None and verdict.peak_memory_gb > 0
    assert verdict.timings["train_wall_s"] < Limits.for_profile("tiny").time_budget_s + GRACE_S
    # What TRAIN got of its CPUs is measured from the host, from the container's own cgroup.
    assert verdict.compute is not None and verdict.compute_share is not None, verdict.compute
    assert verdict.compute["how"].startswith("schedstat of the tasks of cgroup")
    assert (
        verdict.compute["cpu_s"] > 1.0 and verdict.compute["tasks"] >= 2 and verdict.compute["samples"] > 10
    )


def test_baseline_scores_under_runsc(
    docker_sandbox: DockerSandbox, runsc_client: docker.DockerClient, tmp_path: Path
) -> None:
    """Under gVisor (skips locally when runsc is not registered, fails in CI: conftest `require_runsc`)."""
    verdict = docker_sandbox.run_trial(_spec(tmp_path, "runsc", runtime="runsc"))
    assert verdict.status is Status.OK, verdict.reason
    assert verdict.val_bpb is not None and math.isfinite(verdict.val_bpb) and verdict.val_bpb > 0
    assert verdict.limits["runtime"] == "runsc"
