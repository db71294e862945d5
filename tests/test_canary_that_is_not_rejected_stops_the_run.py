"""A run canary that does not come back rejected by the causality probe stops the run loudly: the
`IsolationBroken` error (exit code 8 from `python -m harness run`) says the isolation or the evaluator
is broken and names the trials recorded since the last canary that passed as suspect. The canary's
row is recorded first, so the ledger still verifies and results.tsv, the report and `logs` agree with
it; a restarted run goes on only once a canary is rejected again.

Property: no run keeps producing numbers after its own control showed that a cheat can score.
Attack defeated: a sandbox or evaluator that broke mid-run (a scored cheat, or a cheat rejected for
some unrelated reason, so the probe it must trip was never exercised) going unnoticed until morning.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness.loop_cmds as loop_cmds
from harness.cli import main
from harness.loop import IsolationBroken, LoopError, ResearchLoop
from harness.report import load_run, render_markdown, status_text
from sandbox.constants import Decision, ExitCode, Status
from tests.agent_fakes import ScriptedAgent
from tests.test_canary_runs_after_the_baseline_and_every_n_candidates import (
    CRASHED,
    OTHER_CHECK,
    REJECTED,
    SCORED,
    CanarySandbox,
    assert_records_agree,
    kinds,
)
from tests.test_loop_fakes_honour_the_protocols import PROGRAM, START, Sleeps, run_config
from tests.test_loop_resume_loses_and_duplicates_nothing import improving


def test_a_scored_canary_stops_the_run_and_names_the_suspect_trials(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=10, canary_interval=2)
    sandbox = CanarySandbox(REJECTED, SCORED)  # the first canary passes, the second scores
    agent = ScriptedAgent(improving(10))
    with pytest.raises(IsolationBroken) as raised:
        ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    assert isinstance(raised.value, LoopError)
    records = assert_records_agree(config.run_dir)  # recorded, verifying, consistent
    assert kinds(records) == "bbKccK"
    failed = records[-1]
    assert failed.decision is Decision.CANARY and failed.status is Status.OK
    assert failed.canary is not None and not failed.canary.passed
    assert failed.canary.got == "ok (val_bpb 0.012300)"
    assert failed.canary.escapes == ["val_read: /data/val/shard_00000.npy"]
    assert failed.reason.startswith("CANARY FAILED")
    message = str(raised.value)
    assert message.startswith(f"ISOLATION BROKEN: the run canary {failed.trial_id}")
    assert "isolation or the evaluator's probes are broken" in message
    assert f"since the last canary that was rejected ({records[2].trial_id})" in message
    assert (
        "2 trial(s) recorded since" in message
        and f"{records[3].trial_id} .. {records[4].trial_id}" in message
    )
    assert "val_read" in message
    assert len(agent.calls) == 2  # the two candidates; nothing was proposed after the failed canary

    view = load_run(config.run_dir)
    assert any("ISOLATION BROKEN" in line for line in render_markdown(view, image=None).splitlines())
    assert "1 FAILED" in status_text(config.run_dir)


@pytest.mark.parametrize(
    ("outcome", "got"),
    [
        (OTHER_CHECK, "rejected by artifact:op_not_allowed"),  # the probe it must trip never ran
        (CRASHED, "crash (the fake sandbox says crash)"),
    ],
)
def test_anything_but_a_causality_rejection_stops_the_run(tmp_path: Path, outcome: str, got: str) -> None:
    config = run_config(tmp_path, max_trials=3, canary_interval=5)
    with pytest.raises(IsolationBroken, match="ISOLATION BROKEN") as raised:
        ResearchLoop(config, CanarySandbox(outcome), ScriptedAgent(improving(3)), sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert kinds(records) == "bbK"
    assert records[-1].canary is not None and records[-1].canary.got == got
    assert records[-1].reason.startswith("CANARY FAILED")
    assert "since the start of the run (no canary passed yet)" in str(raised.value)


def test_a_restarted_run_goes_on_only_after_a_canary_passes(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=2, canary_interval=5)
    with pytest.raises(IsolationBroken):
        ResearchLoop(config, CanarySandbox(SCORED), ScriptedAgent(improving(2)), sleep=Sleeps()).run()

    still_broken = ScriptedAgent(improving(2))
    with pytest.raises(IsolationBroken):
        ResearchLoop(config, CanarySandbox(SCORED), still_broken, sleep=Sleeps()).run()
    assert still_broken.calls == []  # the canary ran first and failed again: no candidate
    assert kinds(assert_records_agree(config.run_dir)) == "bbKK"

    fixed = CanarySandbox(REJECTED)
    ResearchLoop(config, fixed, ScriptedAgent(improving(2)), sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert kinds(records) == "bbKKKccK"  # passes, the two candidates, the closing canary
    assert fixed.calls[0] is fixed.canary_calls[0]


def test_logs_of_a_failed_canary_say_it_is_a_failed_control(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = run_config(tmp_path, max_trials=1, canary_interval=1)
    with pytest.raises(IsolationBroken):
        ResearchLoop(config, CanarySandbox(SCORED), ScriptedAgent(improving(1)), sleep=Sleeps()).run()
    assert main(["logs", "t0002", "--run-dir", str(config.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "CONTROL TRIAL (run canary) FAILED" in out
    assert "expected rejected by probe:causality, got ok (val_bpb 0.012300)" in out
    assert "the canary reported reaching val_read" in out


def test_the_cli_exits_8_with_a_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("AUTORESEARCH_PROFILE", "AUTORESEARCH_AGENT", "AUTORESEARCH_CANARY_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "01.py").write_text("# description: one\n" + START, encoding="utf-8")
    monkeypatch.setattr(loop_cmds, "_make_sandbox", lambda backend, data_dir: CanarySandbox(SCORED))
    argv = ["run", "--profile", "tiny", "--agent", "replay", "--replay-dir", "replay", "--backend", "local"]
    code = main([*argv, "--canary-interval", "3"])
    err = capsys.readouterr().err
    assert code == ExitCode.ISOLATION_BROKEN == 8
    assert "canary every 3 candidate trials and after the baseline: set in the configuration" in err
    assert "!!! ISOLATION OR EVALUATOR BROKEN: THE RUN HAS STOPPED (exit 8)" in err
    assert "!!! ISOLATION BROKEN: the run canary t0003" in err
    assert (tmp_path / "runs" / "tiny-replay" / "report.md").is_file()


def test_the_cli_default_is_on_for_docker_and_off_for_local_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.config import DEFAULT_CANARY_INTERVAL, resolve_canary_interval

    assert resolve_canary_interval(None, "docker") == (DEFAULT_CANARY_INTERVAL, "the default")
    assert resolve_canary_interval(None, "local")[0] == 0
    assert resolve_canary_interval(0, "docker") == (0, "set in the configuration")
    assert resolve_canary_interval(3, "local") == (3, "set in the configuration")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTORESEARCH_CANARY_INTERVAL", raising=False)
    (tmp_path / "program.md").write_text(PROGRAM, encoding="utf-8")
    (tmp_path / "train.py").write_text(START, encoding="utf-8")
    (tmp_path / "replay").mkdir()
    (tmp_path / "replay" / "01.py").write_text("# description: one\n" + START, encoding="utf-8")
    monkeypatch.setattr(loop_cmds, "_make_sandbox", lambda backend, data_dir: CanarySandbox(REJECTED))
    argv = ["run", "--profile", "tiny", "--agent", "replay", "--replay-dir", "replay", "--backend", "local"]
    assert main([*argv, "--max-trials", "0"]) == 0
    err = capsys.readouterr().err
    assert "canary OFF: the local backend isolates nothing" in err and "WARNING" in err
