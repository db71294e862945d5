"""Every outcome of a trial maps to exactly one status, and infrastructure failures never become one.

Property: `classify_train`, `classify_eval` and `classify_report` (shared by both backends) turn what
the controller observed into one Status, with OOM and a full output channel taking precedence over
the exit code, the controller's clock over the candidate's exit, and the evaluator's report over
anything the candidate printed. The evaluator's own failure (exit 2, or exit 0 without a readable
report, a malformed one included: not the `EvalReport` schema) raises EvaluatorFailed instead of
blaming the candidate.
Attacks defeated: a candidate that crashes on purpose after filling memory or the output channel to
pass as a mere crash; an artifact that hangs or kills the evaluator to escape rejection; a report
whose val_bpb is NaN, negative or a boolean; a printed `val_bpb:` line treated as a score.
"""

from __future__ import annotations

import math

import pytest

from sandbox.constants import Status
from sandbox.report import EvalReport, parse_report
from sandbox.verdict import (
    EvalOutcome,
    EvaluatorFailed,
    TrainOutcome,
    claimed_val_bpb,
    classify_eval,
    classify_report,
    classify_train,
)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (TrainOutcome(exit_code=137, oom_killed=True, output_full=True), Status.OOM),
        (TrainOutcome(exit_code=1, output_full=True, artifact_present=True), Status.OUTPUT_LIMIT),
        (TrainOutcome(exit_code=153), Status.OUTPUT_LIMIT),  # SIGXFSZ: a write past RLIMIT_FSIZE
        (TrainOutcome(exit_code=None, sigterm_sent=True, sigkilled=True), Status.TIMEOUT),
        (TrainOutcome(exit_code=143, sigterm_sent=True), Status.TIMEOUT),
        (TrainOutcome(exit_code=1, sigterm_sent=True), Status.CRASH),
        (TrainOutcome(exit_code=143), Status.CRASH),  # a SIGTERM the controller did not send
        (TrainOutcome(exit_code=1, artifact_present=True), Status.CRASH),
        (TrainOutcome(exit_code=0, artifact_present=False), Status.CRASH),
    ],
)
def test_train_outcomes_map_to_one_status(outcome: TrainOutcome, status: Status) -> None:
    result = classify_train(outcome)
    assert result is not None
    assert result[0] is status
    assert result[1]  # every early verdict says why


def test_only_a_clean_exit_with_an_artifact_goes_to_the_evaluator() -> None:
    assert classify_train(TrainOutcome(exit_code=0, artifact_present=True)) is None
    # A graceful stop at SIGTERM that exported in time is not a timeout.
    assert classify_train(TrainOutcome(exit_code=0, sigterm_sent=True, artifact_present=True)) is None


@pytest.mark.parametrize(
    ("report", "status", "val"),
    [
        ({"status": "ok", "val_bpb": 1.25}, Status.OK, 1.25),
        ({"status": "ok", "val_bpb": math.nan}, Status.REJECTED, None),
        ({"status": "ok", "val_bpb": -1.0}, Status.REJECTED, None),
        ({"status": "ok", "val_bpb": 0}, Status.REJECTED, None),
        ({"status": "ok"}, Status.REJECTED, None),
        ({"status": "rejected", "reason": "causality probe failed"}, Status.REJECTED, None),
    ],
)
def test_only_a_well_formed_ok_report_scores(
    report: dict[str, object], status: Status, val: float | None
) -> None:
    got_status, got_val, reason = classify_report(EvalReport.model_validate(report))
    assert (got_status, got_val) == (status, val)
    if status is Status.REJECTED:
        assert reason


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"status": "ok", "val_bpb": true}', "val_bpb"),
        (b'{"status": "ok", "val_bpb": "1.2"}', "val_bpb"),
        (b'{"status": "perfect", "val_bpb": 0.1}', "status"),
        (b'{"status": "ok", "val_bpb": 1.0, "bonus": 1}', "bonus"),
        (b"[1, 2]", "not a JSON object"),
        (b"{", "not valid JSON"),
    ],
)
def test_a_malformed_report_is_an_evaluator_failure_not_a_verdict(raw: bytes, why: str) -> None:
    report, error = parse_report(raw)
    assert report is None and why in error
    with pytest.raises(EvaluatorFailed, match=why):
        classify_eval(EvalOutcome(exit_code=0, report=report, report_error=error))


def test_eval_outcomes_blame_the_artifact_not_the_evaluator() -> None:
    ok = {"status": "ok", "val_bpb": 1.5}
    assert classify_eval(EvalOutcome(exit_code=0, report=ok))[:2] == (Status.OK, 1.5)
    # OOM and timeout win even over a report (it may be partial).
    assert classify_eval(EvalOutcome(exit_code=137, oom_killed=True, report=ok))[0] is Status.REJECTED
    assert (
        classify_eval(EvalOutcome(exit_code=None, timed_out=True, report=ok, wall_s=9))[0] is Status.REJECTED
    )
    status, val, reason = classify_eval(EvalOutcome(exit_code=139))
    assert (status, val) == (Status.REJECTED, None)
    assert "139" in reason


@pytest.mark.parametrize(
    "outcome",
    [
        EvalOutcome(exit_code=2),
        EvalOutcome(exit_code=2, report={"status": "ok", "val_bpb": 1.0}),
        EvalOutcome(exit_code=0, report=None, report_error="no report was written"),
    ],
)
def test_evaluator_failures_raise(outcome: EvalOutcome) -> None:
    with pytest.raises(EvaluatorFailed):
        classify_eval(outcome)


def test_claimed_score_is_parsed_for_the_audit_only() -> None:
    log = "step 1\nval_bpb: 3.0\nnoise val_bpb: 0.5 inline\nval_bpb = 0.0001\n"
    assert claimed_val_bpb(log) == pytest.approx(0.0001)  # the last well-formed claim
    assert claimed_val_bpb("no claim here\n") is None
    assert claimed_val_bpb("val_bpb: nan-ish\n") is None
