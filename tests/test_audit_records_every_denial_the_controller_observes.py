"""Every denial and every rejection the controller observes is an event in the trial's audit.jsonl:
SIGTERM at the budget, SIGKILL after the grace, an OOM kill, the output cap, an operator outside the
allow-list, any other artifact check, every failed probe, a graph that fails at run time, an
evaluator that could not run; plus the limits the trial ran under, each container's exit reason and
the verdict. One JSON object per line with exactly `time, trial_id, container, event, detail`.

Property: a security reviewer can see, per trial, what was stopped or refused and why, from the
controller's observations alone (never from what the candidate printed).
Attack defeated: a cheat whose rejection leaves no trace but a one-line reason (a probe that failed
along with the deciding one, a SIGKILL hidden behind a `timeout` status).

The event derivations are tested on engine-neutral outcomes (what both backends hand them); the
file, the hooks and the ordering through LocalSandbox with a stand-in evaluator (no engine, no torch).
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.engine import audit
from sandbox.engine.limits import Limits
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import EvalOutcome, EvaluatorFailed, TrainOutcome, TrialSpec

T0 = 1_800_000_000.0  # an epoch time
LIMITS = Limits(time_budget_s=7, kill_grace_s=3, mem_limit_mb=512, eval_mem_limit_mb=1024, output_limit_mb=16)


def names(events: list[audit.Event]) -> list[tuple[str, str]]:
    return [(e.container, e.event) for e in events]


# --------------------------------------------------------------------------- TRAIN


@pytest.mark.parametrize(
    ("outcome", "expected", "status"),
    [
        (TrainOutcome(exit_code=0, artifact_present=True), [], "eval"),
        (TrainOutcome(exit_code=1), [], "crash"),
        (TrainOutcome(exit_code=143, sigterm_sent=True), ["sigterm"], "timeout"),
        (TrainOutcome(exit_code=None, sigterm_sent=True, sigkilled=True), ["sigterm", "sigkill"], "timeout"),
        (TrainOutcome(exit_code=137, oom_killed=True), ["oom_kill"], "oom"),
        (TrainOutcome(exit_code=0, output_full=True, artifact_present=True), ["output_cap"], "output_limit"),
        (TrainOutcome(exit_code=153), ["output_cap"], "output_limit"),  # SIGXFSZ
    ],
)
def test_train_denials_and_exit_reason(outcome: TrainOutcome, expected: list[str], status: str) -> None:
    signals = {"SIGTERM": (7.01, T0 + 7.01), "SIGKILL": (10.02, T0 + 10.02)}
    events = audit.train_events(outcome, LIMITS, signals=signals)
    assert names(events) == [("train", e) for e in [*expected, "exit"]]
    exit_ = events[-1].detail
    assert exit_["status"] == status and exit_["exit_code"] == outcome.exit_code and exit_["reason"]
    by_name = {e.event: e.detail for e in events}
    at = {e.event: e.at for e in events}
    if "sigterm" in by_name:
        assert by_name["sigterm"] == {"at_s": 7.01, "budget_s": 7.0} and at["sigterm"] == T0 + 7.01
    if "sigkill" in by_name:
        assert by_name["sigkill"] == {"at_s": 10.02, "budget_s": 7.0, "grace_s": 3.0}
    if "oom_kill" in by_name:
        assert by_name["oom_kill"] == {"mem_limit_mb": 512}
    if "output_cap" in by_name:
        assert by_name["output_cap"]["output_limit_mb"] == 16


# --------------------------------------------------------------------------- EVAL


def _report(check: str | None, probes: dict[str, bool] | None = None) -> dict[str, Any]:
    return {
        "status": "ok" if check is None else "rejected",
        "check": check,
        "reason": f"because of {check}",
        "val_bpb": 1.5 if check is None else None,
        "probes": {k: {"passed": v, "detail": f"{k} detail"} for k, v in (probes or {}).items()},
        "probe_deviation_nats": {"causality_random": 30.0, "causality_natural": 29.0, "rows_permuted": 2.0},
    }


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (_report(None, {"finite": True, "causality": True}), []),
        (_report("artifact:op_not_allowed"), ["operator_not_allowed"]),
        (_report("artifact:not_a_zip"), ["artifact_rejected"]),
        (_report("artifact:pickle_payload"), ["artifact_rejected"]),
        (_report("runtime:graph_error"), ["runtime_rejected"]),
        (_report("internal:KeyError"), ["runtime_rejected"]),
        (
            _report("probe:causality", {"finite": True, "causality": False, "row_independence": False}),
            ["probe_failed", "probe_failed"],  # every failed probe, not only the deciding one
        ),
    ],
)
def test_evaluator_rejections_from_its_report(report: dict[str, Any], expected: list[str]) -> None:
    events = audit.eval_events(EvalOutcome(exit_code=0, report=report), LIMITS)
    assert names(events) == [("eval", e) for e in ["exit", *expected]]
    assert events[0].detail["status"] == ("ok" if report["check"] is None else "rejected")
    for e in events[1:]:
        if e.event == "probe_failed":
            continue
        assert e.detail == {"check": report["check"], "reason": report["reason"]}
    probes = {e.detail["probe"]: e.detail for e in events if e.event == "probe_failed"}
    if probes:
        assert probes["causality"]["deciding"] and not probes["row_independence"]["deciding"]
        assert probes["causality"]["deviation_nats"] == {"causality_random": 30.0, "causality_natural": 29.0}
        assert probes["row_independence"]["deviation_nats"] == {"rows_permuted": 2.0}
        assert probes["causality"]["detail"] == "causality detail"


def test_eval_kills_and_evaluator_failures() -> None:
    killed = audit.eval_events(
        EvalOutcome(exit_code=None, timed_out=True, wall_s=600),
        LIMITS,
        signals={"SIGKILL": (600.0, T0 + 600)},
    )
    assert names(killed) == [("eval", "sigkill"), ("eval", "exit")]
    assert killed[0].detail == {"at_s": 600.0, "eval_timeout_s": 600.0}
    oom = audit.eval_events(EvalOutcome(exit_code=137, oom_killed=True), LIMITS)
    assert names(oom) == [("eval", "oom_kill"), ("eval", "exit")]
    assert oom[0].detail == {"eval_mem_limit_mb": 1024} and oom[1].detail["status"] == "rejected"
    died = audit.eval_events(EvalOutcome(exit_code=139), LIMITS)
    assert names(died) == [("eval", "exit")] and "139" in died[0].detail["reason"]
    for outcome in (EvalOutcome(exit_code=2), EvalOutcome(exit_code=0, report_error="no report was written")):
        events = audit.eval_events(outcome, LIMITS)
        assert names(events) == [("eval", "exit"), ("eval", "evaluator_failed")]
        assert events[0].detail["status"] == "infrastructure"


def test_the_file_holds_one_object_per_line_with_the_five_keys(tmp_path: Path) -> None:
    trail = audit.AuditTrail(tmp_path, "t0042")
    outcome = TrainOutcome(exit_code=143, sigterm_sent=True)
    trail.record(audit.train_events(outcome, LIMITS, signals={"SIGTERM": (7.0, T0)}, name="ar-x-train"))
    trail.record(audit.train_events(TrainOutcome(exit_code=1), LIMITS))  # a second attempt appends
    lines = (tmp_path / C.AUDIT_FILE).read_text().splitlines()
    assert len(lines) == 3
    for line in lines:
        event = json.loads(line)
        assert tuple(event) == audit.KEYS
        assert event["trial_id"] == "t0042" and event["container"] == "train"
        assert event["time"].endswith("+00:00") and isinstance(event["detail"], dict)
    assert json.loads(lines[0])["detail"]["container_name"] == "ar-x-train"
    assert json.loads(lines[0])["time"] == "2027-01-15T08:00:00.000+00:00"  # when SIGTERM was sent
    assert [e["event"] for e in audit.read_events(tmp_path / C.AUDIT_FILE)] == ["sigterm", "exit", "exit"]


# --------------------------------------------------------------------------- through LocalSandbox


@pytest.fixture
def fake_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (root / name).mkdir(parents=True)
        (root / name / "placeholder").write_text(name)
    return root


def fake_evaluator(tmp_path: Path, report: dict[str, Any] | None, exit_code: int = 0) -> list[str]:
    """An evaluator stand-in that writes `report` (when given) and exits with `exit_code`."""
    script = tmp_path / "fake_evaluate.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import argparse, json, sys
            p = argparse.ArgumentParser()
            for a in ('--profile', '--artifact', '--report', '--data', '--device'):
                p.add_argument(a)
            args = p.parse_args()
            report = {json.dumps(report)!r}
            if report != 'null':
                open(args.report, 'w').write(report)
            sys.exit({exit_code})
            """
        )
    )
    return [sys.executable, str(script)]


def events_of(spec: TrialSpec) -> list[dict[str, Any]]:
    return list(audit.read_events(spec.trial_dir / C.AUDIT_FILE))


MakeSpec = Callable[..., TrialSpec]


def test_local_trial_records_the_clock_and_the_exit(make_spec: MakeSpec, fake_data: Path) -> None:
    spec = make_spec("sigterm_ignorer", time_budget_s=1, kill_grace_s=1)
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    events = events_of(spec)
    assert [(e["container"], e["event"]) for e in events] == [
        ("trial", "limits"),
        ("train", "sigterm"),
        ("train", "sigkill"),
        ("train", "exit"),
        ("trial", "verdict"),
    ]
    assert events[0]["detail"]["limits"] == spec.limits.model_dump(mode="json")
    assert events[0]["detail"]["backend"] == "local"
    assert events[1]["detail"]["at_s"] >= 1.0 and events[2]["detail"]["at_s"] >= 2.0
    times = [e["time"] for e in events]  # the signals carry the time they were sent, not recorded
    assert times == sorted(times) and times[1] < times[3]
    assert events[-1]["detail"] == {"status": "timeout", "val_bpb": None, "reason": verdict.reason}
    assert verdict.logs["audit"] == str(spec.trial_dir / C.AUDIT_FILE)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (_report("artifact:op_not_allowed"), ["operator_not_allowed"]),
        (_report("probe:determinism", {"finite": True, "determinism": False}), ["probe_failed"]),
    ],
)
def test_local_trial_records_the_evaluators_rejections(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path, report: dict[str, Any], expected: list[str]
) -> None:
    spec = make_spec("forged_artifact")
    sandbox = LocalSandbox(data_dir=fake_data, evaluator=fake_evaluator(tmp_path, report))
    verdict = sandbox.run_trial(spec)
    assert verdict.status.value == "rejected"
    events = [(e["container"], e["event"]) for e in events_of(spec)]
    assert events == [
        ("trial", "limits"),
        ("train", "exit"),
        ("eval", "exit"),
        *[("eval", e) for e in expected],
        ("trial", "verdict"),
    ]


def test_an_evaluator_failure_is_recorded_as_infrastructure(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path
) -> None:
    spec = make_spec("forged_artifact")
    sandbox = LocalSandbox(data_dir=fake_data, evaluator=fake_evaluator(tmp_path, None, exit_code=2))
    with pytest.raises(EvaluatorFailed):
        sandbox.run_trial(spec)
    events = [(e["container"], e["event"]) for e in events_of(spec)]
    assert events == [
        ("trial", "limits"),
        ("train", "exit"),
        ("eval", "exit"),
        ("eval", "evaluator_failed"),
        ("trial", "infrastructure_error"),
    ]
