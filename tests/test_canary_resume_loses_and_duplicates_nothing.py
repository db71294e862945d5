"""A controller killed during or after a canary resumes without losing or duplicating a canary row:
an interrupted canary is re-run under its own trial id (its folder has trial.json, no ledger row), a
recorded one is not run again, and the cadence continues from the ledger.

Property: the canary schedule is a function of the ledger, so crashes cannot skip a check (leaving
candidates unvouched for) nor repeat one (a second row for one slot).
Attack defeated: none directly; this guards the records that the canary's alarm relies on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.loop import ResearchLoop
from sandbox.verdict import TrialSpec
from tests.agent_fakes import ScriptedAgent
from tests.test_canary_runs_after_the_baseline_and_every_n_candidates import (
    CanarySandbox,
    assert_records_agree,
    kinds,
)
from tests.test_loop_fakes_honour_the_protocols import Sleeps, run_config
from tests.test_loop_resume_loses_and_duplicates_nothing import Killed, improving


def kill_once_at(trial_id: str) -> Callable[[TrialSpec], None]:
    fired: list[str] = []

    def hook(spec: TrialSpec) -> None:
        if spec.trial_id == trial_id and not fired:
            fired.append(trial_id)
            raise Killed(trial_id)

    return hook


def test_a_canary_killed_mid_run_is_rerun_under_its_own_id(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=3, canary_interval=2)
    # t0000-1 baseline, t0002 canary, t0003-4 candidates, t0005 canary: killed while it runs.
    sandbox = CanarySandbox(on_run=kill_once_at("t0005"))
    with pytest.raises(Killed):
        ResearchLoop(config, sandbox, ScriptedAgent(improving(3)), sleep=Sleeps()).run()
    assert kinds(assert_records_agree(config.run_dir)) == "bbKcc"
    assert (config.run_dir / "trials/t0005/trial.json").exists()

    again = CanarySandbox()
    ResearchLoop(config, again, ScriptedAgent(improving(3)[2:]), sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert kinds(records) == "bbKccKcK"
    assert again.calls[0].trial_id == "t0005" and again.calls[0] is again.canary_calls[0]
    assert [r.trial_id for r in records if r.kind == "canary"] == ["t0002", "t0005", "t0007"]


def test_a_recorded_canary_is_not_run_again(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=4, canary_interval=3)
    # Killed in the first candidate after the canary: the canary's row is already in the ledger.
    sandbox = CanarySandbox(on_run=kill_once_at("t0003"))
    with pytest.raises(Killed):
        ResearchLoop(config, sandbox, ScriptedAgent(improving(4)), sleep=Sleeps()).run()
    assert kinds(assert_records_agree(config.run_dir)) == "bbK"

    again = CanarySandbox()
    ResearchLoop(config, again, ScriptedAgent(improving(4)), sleep=Sleeps()).run()
    records = assert_records_agree(config.run_dir)
    assert kinds(records) == "bbKcccKcK"
    assert again.calls[0].trial_id == "t0003"  # the interrupted candidate, not a second canary


def test_raising_max_trials_continues_the_cadence(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1, canary_interval=2)
    ResearchLoop(config, CanarySandbox(), ScriptedAgent(improving(1)), sleep=Sleeps()).run()
    assert kinds(assert_records_agree(config.run_dir)) == "bbKcK"  # the closing canary after 1 candidate

    more = config.model_copy(update={"max_trials": 4})
    ResearchLoop(more, CanarySandbox(), ScriptedAgent(improving(3)), sleep=Sleeps()).run()
    assert kinds(assert_records_agree(config.run_dir)) == "bbKcKccKcK"

    # The same plan again: nothing is due, nothing runs.
    idle = CanarySandbox()
    summary = ResearchLoop(more, idle, ScriptedAgent(), sleep=Sleeps()).run()
    assert summary.stopped.startswith("max_trials reached") and idle.calls == []
    assert kinds(assert_records_agree(config.run_dir)) == "bbKcKccKcK"
