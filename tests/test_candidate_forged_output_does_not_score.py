"""A score the candidate prints or fakes never becomes a verdict: only the evaluator's report scores.

Property: a candidate that prints `val_bpb: 0.0001` ends as `crash` (no artifact) or `rejected` (an
artifact that is not a valid exported program), with `val_bpb` None and the forged number kept only
as `claimed_val_bpb` for the audit.
Attack defeated: the reference autoresearch loop reads `val_bpb:` from train.py's own output, so an
agent can "improve" by printing a better number or by writing a junk model file next to it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox.constants import Status
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def test_a_printed_score_without_artifact_is_a_crash(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    verdict = docker_sandbox.run_trial(make_spec("forged_score"))
    assert verdict.status is Status.CRASH
    assert verdict.val_bpb is None
    assert verdict.claimed_val_bpb == pytest.approx(0.0001)
    assert verdict.report is None  # the evaluator never ran: nothing to score


def test_a_junk_artifact_with_a_printed_score_is_rejected(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    verdict = docker_sandbox.run_trial(make_spec("forged_artifact"))
    assert verdict.status is Status.REJECTED
    assert verdict.val_bpb is None
    assert verdict.claimed_val_bpb == pytest.approx(0.0001)
    assert verdict.report is not None and verdict.report["status"] == "rejected"
    assert verdict.images["trainer"].startswith("sha256:")
