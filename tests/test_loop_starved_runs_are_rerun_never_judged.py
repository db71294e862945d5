"""A run the host starved of compute is never judged: the loop sets it aside, waits (doubling), runs it
again, and records only the runs that were not starved; after `starved_attempts` in a row the run
pauses with a clear message (exit code 9 from `run`), and the next start re-runs the same trial.

Accidents this defeats: a loaded host turning candidates into discards, crashes or timeouts (or, when
the baseline was measured on a busy host, equal candidates into keeps); a busy night filling the
ledger with noise instead of pausing; a paused trial being abandoned as if it had crashed the
controller. Starved runs are not ledger rows (the ledger holds judged trials, one row each); they stay
in the trial folder under starved/<n>/ and the trial's row lists them, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.config import RetrySettings
from harness.loop import HostStarved, ResearchLoop
from harness.records.chain import Ledger
from harness.records.results import ResultsFile
from harness.records.schemas import TrialRecord
from sandbox.constants import VERDICT_FILE, Decision, Status
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, Sleeps, edit, run_config, with_score

RETRIES = RetrySettings(
    sandbox_backoff_s=1.0, agent_backoff_s=1.0, starved_attempts=3, starved_backoff_s=30.0
)


def test_a_starved_baseline_run_is_rerun_after_a_wait_and_only_the_fed_run_counts(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1, retries=RETRIES)
    sandbox = FakeSandbox(noise=0.001, starve=lambda k: k in (0, 1))  # the first two calls are starved
    sleeps = Sleeps()
    agent = ScriptedAgent([edit(lambda t: with_score(t, 1.2), "worse")])
    ResearchLoop(config, sandbox, agent, sleep=sleeps).run()
    assert sleeps.waits == [30.0, 60.0]  # waited, doubling, before each re-run
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    assert [r.decision for r in records] == [Decision.BASELINE, Decision.BASELINE, Decision.DISCARD]
    assert all(r.status is not Status.STARVED for r in records)
    assert all(run.status is not Status.STARVED for r in records for run in r.runs)
    first = records[0]
    assert [a.folder for a in first.starved] == ["starved/1", "starved/2"]
    assert all(a.compute_share == 0.4 and "starved" in a.reason for a in first.starved)
    assert first.runs[0].compute_share is None  # the fed run (the fake measures nothing)
    trial = config.run_dir / "trials" / first.trial_id
    for n in (1, 2):
        assert (trial / "starved" / str(n) / VERDICT_FILE).is_file()
    assert f"starved/1/{VERDICT_FILE}" in first.hashes  # the set-aside runs are hashed with the trial
    assert len(ResultsFile(config.run_dir / "results.tsv").read()) == 3
    assert len(sandbox.calls) == 2 + 2 + 1


def test_a_starved_candidate_run_is_never_recorded_as_its_result(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1, retries=RETRIES)
    # Calls 0, 1: baseline; call 2: the candidate's first run, starved; call 3: its re-run.
    sandbox = FakeSandbox(noise=0.001, starve=lambda k: k == 2)
    agent = ScriptedAgent([edit(lambda t: with_score(t, 1.2), "worse")])
    ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    candidate = Ledger(config.run_dir / "ledger.jsonl").records()[-1]
    assert candidate.decision is Decision.DISCARD and candidate.status is Status.OK
    assert candidate.val_bpb == pytest.approx(1.2, abs=0.01)  # judged on the fed run only
    assert len(candidate.runs) == 1 and len(candidate.starved) == 1


def test_too_many_starved_runs_pause_the_run_and_the_next_start_resumes_the_trial(tmp_path: Path) -> None:
    config = run_config(tmp_path, max_trials=1, retries=RETRIES)
    busy = FakeSandbox(starve=lambda k: True)
    for _ in range(RETRIES.trial_starts + 1):  # more pauses than a trial may have starts
        with pytest.raises(HostStarved, match="paused") as stop:
            ResearchLoop(config, busy, ScriptedAgent(), sleep=Sleeps()).run()
        assert "run the same command again" in str(stop.value)
        assert Ledger(config.run_dir / "ledger.jsonl").records() == []  # nothing judged
    quiet = FakeSandbox(noise=0.001)
    agent = ScriptedAgent([edit(lambda t: with_score(t, 1.2), "worse")])
    ResearchLoop(config, quiet, agent, sleep=Sleeps()).run()
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    assert records[0].trial_id == "t0000"  # the same trial, not abandoned
    assert len(records[0].starved) == RETRIES.starved_attempts * (RETRIES.trial_starts + 1)
    assert not list((config.run_dir / "trials").glob("*.abandoned*"))
    assert [r.decision for r in records] == [Decision.BASELINE, Decision.BASELINE, Decision.DISCARD]


def test_a_host_loaded_for_part_of_a_20_trial_run_changes_no_decision(tmp_path: Path) -> None:
    """The same 20 proposals on a quiet host and on one that starves every run for a stretch (calls
    10 to 17) and now and then: the same decisions and scores, the starved runs only in `starved`."""
    scores = [1.2, 0.97, 1.1, 0.9, 1.3, 0.95, 0.88, 1.0, 0.92, 0.85] * 2

    def run(folder: Path, starve: Callable[[int], bool] | None) -> list[TrialRecord]:
        config = run_config(folder, max_trials=20, retries=RETRIES)
        agent = ScriptedAgent([edit(lambda t, s=s: with_score(t, s), f"score {s}") for s in scores])
        ResearchLoop(config, FakeSandbox(noise=0.002, starve=starve), agent, sleep=Sleeps()).run()
        return Ledger(config.run_dir / "ledger.jsonl").records()

    quiet = run(tmp_path / "quiet", None)
    loaded = run(tmp_path / "loaded", lambda k: 10 <= k < 12 or 20 <= k < 22 or k % 7 == 3)
    assert [(r.decision, r.val_bpb) for r in loaded] == [(r.decision, r.val_bpb) for r in quiet]
    assert sum(len(r.starved) for r in loaded) >= 6 and not any(r.starved for r in quiet)
    assert all(run.status is not Status.STARVED for r in loaded for run in r.runs)
    assert [r.status for r in loaded] == [r.status for r in quiet]  # no starved run became a crash either
