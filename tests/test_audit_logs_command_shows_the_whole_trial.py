"""`python -m harness logs TRIAL` shows a human everything about one trial: both containers' logs
(TRAIN, marked untrusted, and EVAL), the limits it ran under, each container's exit reason, the
audit events with the denials marked, and the evaluator's report with every probe.

Property: auditing a run needs no JSON spelunking in the trial folder; what the controller denied
and why is on one page.
Attack defeated: none directly; a rejection nobody can read is a rejection nobody checks.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.cli import main
from sandbox import constants as C
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import TrialSpec

REPORT = {
    "status": "rejected",
    "check": "probe:causality",
    "reason": "probe causality failed: logits moved by up to 30 nats",
    "val_bpb": None,
    "probes": {
        "finite": {"passed": True, "detail": "all logits finite"},
        "causality": {"passed": False, "detail": "logits moved by up to 30 nats"},
    },
    "probe_deviation_nats": {"causality_random": 30.0},
    "ops": {"aten.eq.Tensor": 1},
    "artifact_sha256": "ab" * 32,
    "hashes": {"evaluator": "cd" * 32},
}


@pytest.fixture
def trial(tmp_path: Path, make_spec: Callable[..., TrialSpec]) -> tuple[Path, TrialSpec]:
    data = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (data / name).mkdir(parents=True)
        (data / name / "placeholder").write_text(name)
    evaluator = tmp_path / "fake_evaluate.py"
    evaluator.write_text(
        textwrap.dedent(
            f"""
            import argparse
            p = argparse.ArgumentParser()
            for a in ('--profile', '--artifact', '--report', '--data', '--device'):
                p.add_argument(a)
            args = p.parse_args()
            print('the evaluator speaks', flush=True)
            open(args.report, 'w').write({json.dumps(REPORT)!r})
            """
        )
    )
    run_dir = tmp_path / "run"
    spec = make_spec("forged_artifact", time_budget_s=30)
    spec = spec.model_copy(update={"trial_id": "t0000", "trial_dir": run_dir / "trials" / "t0000"})
    LocalSandbox(data_dir=data, evaluator=[sys.executable, str(evaluator)]).run_trial(spec)
    return run_dir, spec


def test_logs_show_logs_limits_exits_report_and_audit(
    trial: tuple[Path, TrialSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, spec = trial
    assert main(["logs", "t0000", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no ledger row" in out  # a bare trial folder (the sandbox's part of a trial)
    sections = [line for line in out.splitlines() if line.startswith("===== ")]
    titles = [s.split("=====")[1].strip() for s in sections]
    assert titles == [
        "run 0: verdict",
        "run 0: limits",
        "run 0: exit reasons",
        f"run 0: audit events ({C.AUDIT_FILE})",
        f"run 0: evaluator report ({spec.trial_dir / C.REPORT_FILE})",
        "run 0: TRAIN log (untrusted candidate output)",
        "run 0: EVAL log",
        "run 0: sandbox steps",
    ]
    assert '"time_budget_s": 30.0' in out and '"mem_limit_mb": 512' in out  # the limits
    assert "TRAIN train: exit code 0" in out and "handed to EVAL" in out  # the exit reasons
    assert "EVAL  eval: exit code 0" in out and "-> rejected: probe causality failed" in out
    assert "DENIED " in out and "probe_failed" in out and "denials: probe_failed" in out  # the audit
    assert "causality         FAILED  logits moved by up to 30 nats" in out  # the report, per probe
    assert "finite            passed  all logits finite" in out
    assert "operators: aten.eq.Tensor x1" in out and f"hash evaluator: {'cd' * 32}" in out
    assert "val_bpb: 0.0001" in out  # the candidate's (forged) claim, in its own untrusted section
    assert "the evaluator speaks" in out  # the EVAL log


def test_logs_name_a_missing_trial(trial: tuple[Path, TrialSpec], capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, _ = trial
    assert main(["logs", "t0099", "--run-dir", str(run_dir)]) == 1
    assert "no trial t0099" in capsys.readouterr().err
