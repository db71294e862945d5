"""The engine-free LocalSandbox keeps the trial contract: the controller's clock, a scratch environment,
a data view without val/, capped logs, and the shared classification of TRAIN and EVAL outcomes.

Property: the backend the controller's unit tests rely on behaves like the Docker one on everything
that is not isolation, so tests written against it mean something: a printed score is only a claim,
the budget is enforced from outside (SIGTERM, then SIGKILL after the grace), the output cap decides
`output_limit`, nothing of the controller's environment (API keys) reaches the candidate, and the
evaluator's exit status and report are read by the same rules (exit 2 or a missing report is an
infrastructure failure, anything else the artifact's fault).
Attacks defeated (at the contract level; LocalSandbox isolates nothing): forged `val_bpb:` lines,
ignoring SIGTERM, flooding the output or the log, reading API keys from the environment.
No engine, no torch: the evaluator is replaced by small scripts with known behaviour.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine.local import LocalSandbox
from sandbox.verdict import DataMissing, EvaluatorFailed, TrialSpec, Verdict

MakeSpec = Callable[..., TrialSpec]


@pytest.fixture
def fake_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in (C.TRAIN_DIRNAME, C.VAL_DIRNAME, C.TOKENIZER_DIRNAME):
        (root / name).mkdir(parents=True)
        (root / name / "placeholder").write_text(name)
    return root


def _candidate(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def _fake_evaluator(tmp_path: Path, body: str) -> list[str]:
    """An evaluator stand-in: parses the real command line, then runs `body`."""
    script = tmp_path / "fake_evaluate.py"
    script.write_text(
        "import argparse, json, os, sys, time\n"
        "p = argparse.ArgumentParser()\n"
        "for a in ('--profile', '--artifact', '--report', '--data', '--device'):\n"
        "    p.add_argument(a)\n"
        "args = p.parse_args()\n"
        "seen = {'artifact': sorted(os.listdir(args.artifact)), 'data': sorted(os.listdir(args.data))}\n"
        "print('SEEN ' + json.dumps(seen), flush=True)\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(script)]


def _verdict_file(spec: TrialSpec) -> Verdict:
    return Verdict.model_validate_json((spec.trial_dir / C.VERDICT_FILE).read_text())


def test_a_printed_score_is_a_claim_not_a_score(make_spec: MakeSpec, fake_data: Path) -> None:
    spec = make_spec("forged_score")
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    assert verdict.status is Status.CRASH
    assert verdict.val_bpb is None
    assert verdict.claimed_val_bpb == pytest.approx(0.0001)
    assert verdict.backend == "local"
    assert _verdict_file(spec) == verdict
    assert (spec.trial_dir / C.CANDIDATE_FILE).read_bytes() == spec.candidate.read_bytes()


def test_the_budget_ends_with_sigterm(make_spec: MakeSpec, fake_data: Path) -> None:
    spec = make_spec("sleeper", time_budget_s=1, kill_grace_s=5)
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    assert verdict.status is Status.TIMEOUT
    assert (
        1.0 <= verdict.timings["train_wall_s"] < 1.0 + 1.0
    )  # died of SIGTERM, long before the grace ran out


def test_ignoring_sigterm_ends_at_the_grace(make_spec: MakeSpec, fake_data: Path) -> None:
    spec = make_spec("sigterm_ignorer", time_budget_s=1, kill_grace_s=1)
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    assert verdict.status is Status.TIMEOUT
    assert "SIGTERM" in verdict.reason
    assert 2.0 <= verdict.timings["train_wall_s"] < 3.0


def test_a_nonzero_exit_is_a_crash(make_spec: MakeSpec, fake_data: Path) -> None:
    verdict = LocalSandbox(data_dir=fake_data).run_trial(make_spec("crash"))
    assert verdict.status is Status.CRASH
    assert "code 1" in verdict.reason
    assert "candidate bug" in Path(verdict.logs["train"]).read_text()


def test_output_past_the_cap_is_output_limit(make_spec: MakeSpec, fake_data: Path, tmp_path: Path) -> None:
    writer = _candidate(
        tmp_path,
        "writer",
        """
        import os
        with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.pt2"), "wb") as f:
            f.write(b"x" * (3 * 1024 * 1024))
        """,
    )
    verdict = LocalSandbox(data_dir=fake_data).run_trial(make_spec(writer, output_limit_mb=2))
    assert verdict.status is Status.OUTPUT_LIMIT


def test_the_environment_is_built_from_scratch(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "also-secret")
    dumper = _candidate(
        tmp_path,
        "dumper",
        """
        import json, os
        print("ENV " + json.dumps(dict(os.environ)))
        print("DATA " + json.dumps(sorted(os.listdir(os.environ["AUTORESEARCH_DATA"]))))
        """,
    )
    spec = make_spec(dumper, seed=7)
    verdict = LocalSandbox(data_dir=fake_data).run_trial(spec)
    lines = Path(verdict.logs["train"]).read_text().splitlines()
    env = json.loads(next(line for line in lines if line.startswith("ENV "))[4:])
    data = json.loads(next(line for line in lines if line.startswith("DATA "))[5:])
    assert "sk-ant-test-secret" not in json.dumps(env)
    assert "ANTHROPIC_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env[C.ENV_PROFILE] == "tiny" and env[C.ENV_SEED] == "7"
    assert data == sorted([C.TRAIN_DIRNAME, C.TOKENIZER_DIRNAME])  # val/ is not in the candidate's view


def test_logs_are_capped_keeping_the_end(make_spec: MakeSpec, fake_data: Path, tmp_path: Path) -> None:
    chatty = _candidate(
        tmp_path,
        "chatty",
        """
        import sys
        for i in range(40000):
            sys.stdout.write(f"line {i:08d} " + "x" * 64 + "\\n")
        print("THE LAST LINE")
        """,
    )
    verdict = LocalSandbox(data_dir=fake_data).run_trial(make_spec(chatty, log_limit_bytes=64 * 1024))
    log = Path(verdict.logs["train"]).read_bytes()
    assert len(log) <= 64 * 1024
    assert log.rstrip().endswith(b"THE LAST LINE")
    assert b"earlier bytes dropped" in log


def test_missing_data_is_an_infrastructure_error(make_spec: MakeSpec, tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match="make data"):
        LocalSandbox(data_dir=tmp_path / "nowhere").run_trial(make_spec("forged_score"))


_EXPORTER = """
import os
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.pt2"), "wb") as f:
    f.write(b"not really a graph")
print("val_bpb: 0.0001")
"""


@pytest.mark.parametrize(
    ("body", "status", "val_bpb"),
    [
        ("json.dump({'status': 'ok', 'val_bpb': 1.25}, open(args.report, 'w'))", Status.OK, 1.25),
        (
            "json.dump({'status': 'rejected', 'reason': 'causality'}, open(args.report, 'w'))",
            Status.REJECTED,
            None,
        ),
        ("json.dump({'status': 'ok', 'val_bpb': -3}, open(args.report, 'w'))", Status.REJECTED, None),
        ("sys.exit(1)", Status.REJECTED, None),
        ("time.sleep(60)", Status.REJECTED, None),
    ],
)
def test_the_evaluator_decides(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path, body: str, status: Status, val_bpb: float | None
) -> None:
    sandbox = LocalSandbox(data_dir=fake_data, evaluator=_fake_evaluator(tmp_path, body))
    spec = make_spec(_candidate(tmp_path, "exporter", _EXPORTER), eval_timeout_s=2)
    verdict = sandbox.run_trial(spec)
    assert (verdict.status, verdict.val_bpb) == (status, val_bpb)
    assert verdict.claimed_val_bpb == pytest.approx(0.0001)
    seen = json.loads(Path(verdict.logs["eval"]).read_text().split("SEEN ", 1)[1].splitlines()[0])
    assert seen["artifact"] == [C.ARTIFACT_FILE]
    assert C.VAL_DIRNAME in seen["data"]  # the evaluator, unlike TRAIN, sees the validation split


@pytest.mark.parametrize(
    "body",
    ["sys.exit(2)", "sys.exit(0)", "open(args.report, 'w').write('{not json')"],
    ids=["exit-2", "exit-0-without-report", "exit-0-with-garbage"],
)
def test_evaluator_failures_are_not_verdicts(
    make_spec: MakeSpec, fake_data: Path, tmp_path: Path, body: str
) -> None:
    sandbox = LocalSandbox(data_dir=fake_data, evaluator=_fake_evaluator(tmp_path, body))
    spec = make_spec(_candidate(tmp_path, "exporter", _EXPORTER))
    with pytest.raises(EvaluatorFailed):
        sandbox.run_trial(spec)
    assert not (spec.trial_dir / C.VERDICT_FILE).exists()
