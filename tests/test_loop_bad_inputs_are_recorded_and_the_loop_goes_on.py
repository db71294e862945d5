"""Bad inputs get a recorded status or a clear message, and the loop goes on where it can:

- a proposal that does not parse, or that changes nothing, is recorded (crash, with the reason)
  without running it, and the next proposal follows; too many in a row stop the run with a message;
- sandbox failures are retried with backoff and never recorded against the candidate; when they
  persist the run stops, and the next start re-runs the trial;
- agent errors are retried, a fatal agent error stops at once, an exhausted agent ends cleanly;
- a missing program.md, a broken baseline, a second controller on the same folder and a resumed
  run with another profile stop before anything is written, each with what to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.agents.base import AgentError, AgentFatal, Proposal, Usage
from harness.loop import (
    AgentGaveUp,
    BaselineFailed,
    InvalidStreak,
    ProgramMissing,
    ResearchLoop,
    RunLocked,
    RunMismatch,
    SandboxGaveUp,
)
from harness.records.chain import Ledger
from harness.records.schemas import TrialRecord
from sandbox.constants import Decision, Status
from sandbox.verdict import DataMissing
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import (
    START,
    FakeSandbox,
    Sleeps,
    edit,
    run_config,
    with_outcome,
    with_score,
)


def records(run_dir: Path) -> list[TrialRecord]:
    return Ledger(run_dir / "ledger.jsonl").records()


def test_unparseable_and_unchanged_proposals_are_recorded_without_running(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=3)
    sandbox = FakeSandbox()
    agent = ScriptedAgent(
        [
            Proposal(train_py="def broken(:\n    pass\n", description="syntax error"),
            edit(lambda t: t, "no edit"),
            edit(lambda t: with_score(t, 0.9), "a real one"),
        ]
    )
    ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    rows = records(config.run_dir)
    broken, same, real = rows[2:]
    assert (broken.status, broken.decision, broken.runs) == (Status.CRASH, Decision.CRASH, [])
    assert broken.reason.startswith("does not parse: ") and "line 1" in broken.reason
    assert (same.status, same.decision) == (Status.CRASH, Decision.CRASH)
    assert same.reason.startswith("no change")
    assert real.decision is Decision.KEEP  # the loop went on
    ran = [spec.trial_id for spec in sandbox.calls]
    assert broken.trial_id not in ran and same.trial_id not in ran
    assert (config.run_dir / "trials" / broken.trial_id / "train.py").read_text().startswith("def broken(")
    assert agent.calls[1].last is not None and agent.calls[1].last.reason.startswith("does not parse")


def test_too_many_invalid_proposals_in_a_row_stop_the_run(tmp_path: Path) -> None:
    config = run_config(tmp_path, retries={"invalid_streak": 3, "agent_backoff_s": 0})
    agent = ScriptedAgent([edit(lambda t: t, "same again")] * 10)
    with pytest.raises(InvalidStreak, match="last 3 proposals did not run"):
        ResearchLoop(config, FakeSandbox(), agent, sleep=Sleeps()).run()
    assert len(records(config.run_dir)) == 2 + 3


def test_sandbox_errors_are_retried_with_backoff_and_never_recorded(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1)
    sandbox = FakeSandbox(infra_failures=2)
    sleeps = Sleeps()
    ResearchLoop(
        config, sandbox, ScriptedAgent([edit(lambda t: with_score(t, 0.9), "x")]), sleep=sleeps
    ).run()
    assert sleeps.waits == [1.0, 2.0]  # sandbox_backoff_s, doubled
    rows = records(config.run_dir)
    assert len(rows) == 3 and all(r.status is Status.OK for r in rows)
    assert [s.trial_id for s in sandbox.calls[:3]] == ["t0000"] * 3  # the same trial, not a new one


def test_persistent_sandbox_failure_stops_and_the_trial_is_rerun_later(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1)
    sleeps = Sleeps()
    with pytest.raises(SandboxGaveUp, match=r"failed 3 times.*Nothing was recorded against the candidate"):
        ResearchLoop(config, FakeSandbox(infra_failures=99), ScriptedAgent(), sleep=sleeps).run()
    assert len(sleeps.waits) == 2
    assert not (config.run_dir / "ledger.jsonl").exists()
    sandbox = FakeSandbox()
    ResearchLoop(
        config, sandbox, ScriptedAgent([edit(lambda t: with_score(t, 0.9), "x")]), sleep=Sleeps()
    ).run()
    assert sandbox.calls[0].trial_id == "t0000"
    assert [r.trial_id for r in records(config.run_dir)] == ["t0000", "t0001", "t0002"]


def test_missing_data_is_not_retried(tmp_path: Path) -> None:
    config = run_config(tmp_path)

    def no_data(spec: object) -> None:
        raise DataMissing("the tiny data lacks val/: run `make data`")

    sleeps = Sleeps()
    with pytest.raises(SandboxGaveUp, match="make data"):
        ResearchLoop(config, FakeSandbox(on_run=no_data), ScriptedAgent(), sleep=sleeps).run()
    assert sleeps.waits == []


def test_agent_errors_are_retried_fatal_ones_stop_exhaustion_ends_cleanly(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=5)
    spent = Usage(model="m", input_tokens=100, api_calls=1)
    agent = ScriptedAgent(
        [
            AgentError("overloaded", usage=spent),
            edit(lambda t: with_score(t, 0.9), "after one retry"),
        ]
    )
    sleeps = Sleeps()
    summary = ResearchLoop(config, FakeSandbox(), agent, sleep=sleeps).run()
    assert summary.stopped.startswith("the agent has nothing left to propose")
    assert sleeps.waits == [1.0]
    kept = records(config.run_dir)[-1]
    assert kept.agent is not None and kept.agent.usage.input_tokens == 100  # the failed attempt's cost counts

    config2 = run_config(tmp_path / "fatal", max_trials=5)
    with pytest.raises(AgentGaveUp, match="cannot work as configured: bad key"):
        ResearchLoop(config2, FakeSandbox(), ScriptedAgent([AgentFatal("bad key")]), sleep=Sleeps()).run()

    config3 = run_config(tmp_path / "flaky", max_trials=5)
    with pytest.raises(AgentGaveUp, match="failed 3 times"):
        ResearchLoop(config3, FakeSandbox(), ScriptedAgent([AgentError("down")] * 3), sleep=Sleeps()).run()
    assert len(records(config3.run_dir)) == 2  # baselines only: nothing recorded for the failures


def test_missing_program_md_fails_fast_with_what_to_do(tmp_path: Path) -> None:
    config = run_config(tmp_path, program=tmp_path / "nowhere" / "program.md")
    with pytest.raises(ProgramMissing, match=r"program\.md not found.*Write one"):
        ResearchLoop(config, FakeSandbox(), ScriptedAgent()).run()
    assert not config.run_dir.exists()


def test_a_broken_starting_train_py_stops_after_its_baseline(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(with_outcome(START, "crash"), encoding="utf-8")
    config = run_config(tmp_path)
    agent = ScriptedAgent()
    with pytest.raises(BaselineFailed, match=r"starting train.py failed its baseline run t0000: crash"):
        ResearchLoop(config, FakeSandbox(), agent, sleep=Sleeps()).run()
    assert [r.decision for r in records(config.run_dir)] == [Decision.CRASH]
    assert agent.calls == []


def test_a_second_controller_on_the_same_run_is_refused(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1)
    inner: list[Exception] = []

    def second_controller(spec: object) -> None:
        if not inner:
            try:
                ResearchLoop(config, FakeSandbox(), ScriptedAgent()).run()
            except RunLocked as exc:
                inner.append(exc)

    ResearchLoop(
        config,
        FakeSandbox(on_run=second_controller),
        ScriptedAgent([edit(lambda t: with_score(t, 0.9), "x")]),
    ).run()
    assert len(inner) == 1 and "another controller is running" in str(inner[0])
    assert len(records(config.run_dir)) == 3  # the first controller was not disturbed


def test_resuming_with_another_profile_is_refused(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=0)
    ResearchLoop(config, FakeSandbox(), ScriptedAgent(), sleep=Sleeps()).run()
    with pytest.raises(RunMismatch, match="tiny-profile run"):
        ResearchLoop(run_config(tmp_path, profile="gpu"), FakeSandbox(), ScriptedAgent()).run()
