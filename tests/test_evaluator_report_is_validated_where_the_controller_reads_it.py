"""The controller reads the evaluator's report through one typed model, and a malformed one is no verdict.

Property: every report the real evaluator writes (scored, rejected by a probe, rejected before
loading) parses as `EvalReport` with nothing lost, and survives the trip through `Verdict` and its
JSON form (verdict.json, the Ray wire) unchanged; a report that does not match the schema (a key the
controller does not know, a wrong type, an unknown status) comes back from `parse_report` as
(None, an error naming the field), which `classify_eval` turns into `EvaluatorFailed`.
Failure it guards against: the evaluator and the controller drifting apart on the report's shape
(a renamed key read as missing by a `.get`, a score read as a string), unnoticed until an audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.constants import Status
from sandbox.incontainer.evaluate import evaluate, write_report
from sandbox.report import EvalReport, parse_report
from sandbox.verdict import EvalOutcome, EvaluatorFailed, Verdict, classify_eval
from tests.evil_models import FAST_PROFILE, exported


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict[str, Path]:
    """report.json as the evaluator's own code path writes it, for a scored and two rejected artifacts."""
    root = tmp_path_factory.mktemp("reports")
    not_an_artifact = root / "empty_artifact"
    not_an_artifact.mkdir()
    artifacts = {
        "honest": exported("honest", tmp_path_factory.getbasetemp()),
        "non_causal": exported("non_causal", tmp_path_factory.getbasetemp()),
        "empty": not_an_artifact,
    }
    paths = {}
    for name, folder in artifacts.items():
        paths[name] = root / f"{name}.json"
        write_report(paths[name], evaluate(FAST_PROFILE, folder, tiny_data))
    return paths


@pytest.mark.parametrize(
    ("name", "status", "check"),
    [
        ("honest", "ok", None),
        ("non_causal", "rejected", "probe:causality"),
        ("empty", "rejected", "artifact:"),
    ],
)
def test_every_report_the_evaluator_writes_parses_with_nothing_lost(
    written: dict[str, Path], name: str, status: str, check: str | None
) -> None:
    raw = written[name].read_bytes()
    report, error = parse_report(raw)
    assert report is not None, error
    assert error == ""
    assert report.status == status
    if check is None:
        assert report.check is None
    else:
        assert (report.check or "").startswith(check)
    assert report.model_dump(mode="json") == json.loads(raw)  # every key the evaluator wrote is a field
    if status == "ok":
        assert report.val_bpb is not None and report.probes and all(p.passed for p in report.probes.values())
        assert classify_eval(EvalOutcome(exit_code=0, report=report)) == (Status.OK, report.val_bpb, "scored")
    else:
        assert classify_eval(EvalOutcome(exit_code=0, report=report))[0] is Status.REJECTED


def test_the_report_round_trips_through_the_verdict_json(written: dict[str, Path]) -> None:
    report, _ = parse_report(written["non_causal"].read_bytes())
    verdict = Verdict(trial_id="t0001", status=Status.REJECTED, reason="probe", report=report)
    again = Verdict.model_validate_json(verdict.model_dump_json())  # verdict.json, and the Ray wire
    assert again == verdict and isinstance(again.report, EvalReport)
    assert again.report.probes["causality"].passed is False


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.update(val_bpb=str(r["val_bpb"])), "val_bpb"),
        (lambda r: r.update(status="perfect"), "status"),
        (lambda r: r.update(score_bonus=1.0), "score_bonus"),
        (lambda r: r["probes"]["causality"].update(passed="yes"), "probes.causality.passed"),
        (lambda r: r.pop("status"), "status"),
    ],
)
def test_a_malformed_report_is_refused_with_the_field_named(
    written: dict[str, Path], edit: Callable[[dict[str, Any]], object], field: str
) -> None:
    obj = json.loads(written["honest"].read_bytes())
    edit(obj)
    report, error = parse_report(json.dumps(obj).encode())
    assert report is None
    assert "does not match the evaluator's schema" in error and field in error
    with pytest.raises(EvaluatorFailed, match="without a readable report"):
        classify_eval(EvalOutcome(exit_code=0, report=report, report_error=error))
