"""The scheduler decides the run order from the records and the claims alone, and counts each trial
once, by its id, whether it is recorded, running, or both.

The hole it closes: a trial counted both as a ledger row and as running until its worker returns
(the old `WorkerPool._claim`: recorded candidates + claims not yet landed) makes a worker stop early
with "max_trials reached: 3 candidate trials of 3" when only two exist. The interleaving that shows
it: worker A's row is written, A has not returned yet, worker B (done with its own trial) claims.
`test_a_recorded_trial_whose_worker_has_not_returned_counts_once` drives exactly that, with no
threads; on the old counting B gets a stop instead of the third candidate.

The rest pins the order both `--workers 1` and N follow (interrupted trials, baseline runs spread
over the workers, the canary one at a time, candidates) and the stops (max_trials, the
invalid-proposal streak, the cost cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.config import RunConfig
from harness.loop import CapReached, InvalidStreak
from harness.loop.scheduler import (
    Baseline,
    Board,
    Canary,
    Candidate,
    Claim,
    Halted,
    Rerun,
    Scheduler,
    Stop,
    Wait,
    next_step,
)
from harness.records.schemas import CanaryCheck, RunRecord, TrialPlan, TrialRecord
from sandbox.constants import Decision, Status
from tests.test_loop_fakes_honour_the_protocols import run_config

T = "2026-01-01T00:00:00.000+00:00"


def row(
    trial_id: str, kind: str, decision: Decision, val_bpb: float | None = 1.0, **extra: Any
) -> TrialRecord:
    ran = extra.pop("ran", True)
    runs = [
        RunRecord(run=0, sandbox_trial_id=trial_id, folder=".", seed=1, status=Status.OK, val_bpb=val_bpb)
    ]
    return TrialRecord(
        trial_id=trial_id,
        kind=kind,  # type: ignore[arg-type]
        worker="w",
        parent_commit=None,
        candidate_commit=None if kind == "canary" else f"c{trial_id}",
        status=Status.OK,
        decision=decision,
        reason="",
        description=trial_id,
        val_bpb=val_bpb,
        code_lines=10,
        runs=runs if ran else [],
        started_at=T,
        finished_at=T,
        **extra,
    )


def baselines(n: int = 2) -> list[TrialRecord]:
    return [row(f"t{i:04d}", "baseline", Decision.BASELINE, 1.0 + 0.001 * i) for i in range(n)]


def candidate(trial_id: str, *, ran: bool = True) -> TrialRecord:
    return row(trial_id, "candidate", Decision.DISCARD, 1.1 if ran else None, ran=ran)


def canary_row(trial_id: str, passed: bool) -> TrialRecord:
    check = CanaryCheck(passed=passed, expected="x", got="x", source_sha256="0" * 64)
    return row(trial_id, "canary", Decision.CANARY, None, canary=check)


def config(tmp_path: Path, **overrides: Any) -> RunConfig:
    return run_config(tmp_path, **overrides)


class Ledger:
    """The records a scheduler reads: a list the test appends to, as workers record their trials."""

    def __init__(self, records: Sequence[TrialRecord]) -> None:
        self.rows = list(records)

    def records(self) -> list[TrialRecord]:
        return list(self.rows)


def no_cost() -> float:
    return 0.0


def test_a_recorded_trial_whose_worker_has_not_returned_counts_once(tmp_path: Path) -> None:
    ledger = Ledger(baselines())
    scheduler = Scheduler(config(tmp_path, max_trials=3, workers=2))
    a, step_a = scheduler.claim(ledger.records, no_cost)
    scheduler.bind(a, "t0002")
    b, step_b = scheduler.claim(ledger.records, no_cost)
    scheduler.bind(b, "t0003")
    assert (step_a, step_b) == (Candidate(0), Candidate(1))

    ledger.rows.append(candidate("t0003"))  # B records its trial and returns
    scheduler.release(b)
    ledger.rows.append(candidate("t0002"))  # A's row is written; A has not returned yet
    b, step_b = scheduler.claim(ledger.records, no_cost)  # B claims again
    assert step_b == Candidate(2), f"two candidates exist, the third is due: {step_b}"
    scheduler.bind(b, "t0004")

    scheduler.release(a)  # A returns and claims: now three exist, one of them still running
    _, step_a = scheduler.claim(ledger.records, no_cost)
    assert step_a == Stop("max_trials reached: 3 candidate trials of 3 (1 of them still running)")


def test_each_candidate_in_flight_gets_its_own_index(tmp_path: Path) -> None:
    scheduler = Scheduler(config(tmp_path, workers=3))
    ledger = Ledger([*baselines(), candidate("t0002")])
    steps = [scheduler.claim(ledger.records, no_cost)[1] for _ in range(3)]  # none bound yet
    assert steps == [Candidate(1), Candidate(2), Candidate(3)]


def test_interrupted_trials_run_first_and_count_as_claimed(tmp_path: Path) -> None:
    plan = TrialPlan(
        trial_id="t0002",
        kind="candidate",
        parent_commit="ct0000",
        candidate_commit="x",
        description="d",
        seeds=(1, 2),
        code_lines=3,
        created_at=T,
        worker="w",
    )
    scheduler = Scheduler(config(tmp_path, max_trials=2), [plan])
    ledger = Ledger(baselines())
    assert scheduler.claim(ledger.records, no_cost)[1] == Rerun(plan)
    assert scheduler.claim(ledger.records, no_cost)[1] == Candidate(1)
    assert scheduler.claim(ledger.records, no_cost)[1] == Stop(
        "max_trials reached: 2 candidate trials of 2 (2 of them still running)"
    )


def test_baseline_runs_are_spread_then_the_others_wait(tmp_path: Path) -> None:
    c = config(tmp_path)
    assert next_step(Board([]), c) == Baseline(1)
    assert next_step(Board([], (Claim("baseline", "t0000"),)), c) == Baseline(2)
    running = (Claim("baseline", "t0000"), Claim("baseline"))
    assert isinstance(next_step(Board([], running), c), Wait)
    # the first baseline recorded while its worker has not returned: one done, the second is due
    assert next_step(Board(baselines(1), (Claim("baseline", "t0000"),)), c) == Baseline(2)
    assert next_step(Board(baselines(2), (Claim("baseline", "t0001"),)), c) == Candidate(0)


def test_the_canary_runs_one_at_a_time_and_a_failed_one_holds_everything(tmp_path: Path) -> None:
    c = config(tmp_path, canary_interval=2)
    assert next_step(Board(baselines()), c) == Canary(1)
    assert next_step(Board(baselines(), (Claim("canary", "t0002"),)), c) == Candidate(0)
    failed = [*baselines(), canary_row("t0002", passed=False)]
    assert isinstance(next_step(Board(failed, (Claim("canary", "t0002"),)), c), Wait)
    assert next_step(Board(failed), c) == Canary(2), "a restarted run begins with a canary"
    passed = [*baselines(), canary_row("t0002", passed=True), candidate("t0003"), candidate("t0004")]
    assert next_step(Board(passed), c) == Canary(2)


def test_the_invalid_streak_and_the_cost_cap_stop_the_run(tmp_path: Path) -> None:
    c = config(tmp_path)
    invalid = [candidate(f"t{i:04d}", ran=False) for i in range(2, 2 + c.retries.invalid_streak)]
    with pytest.raises(InvalidStreak):
        next_step(Board([*baselines(), *invalid]), c)
    capped = config(tmp_path, max_cost_usd=1.0)
    assert next_step(Board(baselines(), spent_usd=0.99), capped) == Candidate(0)
    with pytest.raises(CapReached) as info:
        next_step(Board(baselines(), spent_usd=1.0), capped)
    assert info.value.cap == "max_cost_usd"


def test_a_halted_scheduler_hands_out_nothing(tmp_path: Path) -> None:
    scheduler = Scheduler(config(tmp_path))
    scheduler.halt("worker 1 failed")
    with pytest.raises(Halted, match="worker 1 failed"):
        scheduler.claim(Ledger(baselines()).records, no_cost)
