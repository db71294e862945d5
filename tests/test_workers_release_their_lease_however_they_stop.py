"""A worker gives its lease back however it stops, and stopping never tears the records.

- A worker whose trial raises (a bug, not a verdict) releases its lease at once, while the other
  worker is still running; the other finishes its trial, which is recorded, then the run raises the
  error (the loop's error policy: an unexpected exception stops the run).
- Ctrl-C / SIGTERM while both workers are inside a trial cancels both at once (the run's cancel
  event reaches both sandboxes): their sandboxes clean up, both leases are released, neither trial
  gets a ledger row, the ledger verifies, and the next `run` (with two workers again) re-runs both
  and finishes the plan exactly.

Without the release in the worker's `finally` the first test times out waiting for the table to
drop the crashed worker's lease; without the cancel event the second hangs in the blocked trials
until their gates time out (and fails: the trials end in an error, not a cancellation).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from harness.loop import ResearchLoop
from harness.records.chain import Ledger
from sandbox.verdict import TrialSpec
from tests.test_loop_fakes_honour_the_protocols import Sleeps
from tests.workers_fakes import (
    WAIT_S,
    RecordingSandbox,
    assert_records_agree,
    lease_of,
    leases_for,
    ledger_has,
    scored,
    wait_until,
    workers_config,
)


def is_candidate(spec: TrialSpec, score: float) -> bool:
    return f"SCORE = {score:.6f}" in spec.candidate.read_text(encoding="utf-8")


def test_a_crashed_worker_releases_its_lease_while_the_other_runs_on(tmp_path: Path) -> None:
    leases = leases_for(tmp_path, 2)
    both_running = threading.Barrier(2, timeout=WAIT_S)
    crashed: list[str] = []

    def gate(spec: TrialSpec) -> None:
        if is_candidate(spec, 0.95):
            both_running.wait()
            crashed.append(lease_of(spec))
            raise RuntimeError("a bug in the sandbox")
        if is_candidate(spec, 1.5):
            both_running.wait()
            wait_until(lambda: bool(crashed), "the other worker to crash")
            wait_until(
                lambda: crashed[0] not in leases.holders(), "the crashed worker's lease to be released"
            )

    sandbox = RecordingSandbox(gate)
    config = workers_config(tmp_path, 2, max_trials=10)
    with pytest.raises(RuntimeError, match="a bug in the sandbox"):
        ResearchLoop(config, sandbox, scored(0.95, 1.5, 0.9), sleep=Sleeps(), leases=leases).run()

    assert leases.holders() == {}
    crashed_id = next(s.trial_id for s in sandbox.specs if is_candidate(s, 0.95))
    records = assert_records_agree(config, unrecorded=[crashed_id])  # a folder, no row: resume re-runs it
    assert any(r.description == "score 1.5" for r in records), "the other worker's trial was recorded"
    assert not any(r.description == "score 0.95" for r in records)
    assert not any(r.description == "score 0.9" for r in records), "nothing new starts after a failure"


def test_sigterm_interrupts_every_worker_and_the_run_resumes(tmp_path: Path) -> None:
    leases = leases_for(tmp_path, 2)
    config = workers_config(tmp_path, 2, max_trials=4)
    inside = threading.Barrier(2, timeout=WAIT_S)

    def gate(spec: TrialSpec) -> None:
        if is_candidate(spec, 0.95) or is_candidate(spec, 1.5):
            if inside.wait() == 0:  # both workers are inside a trial: stop the controller
                os.kill(os.getpid(), signal.SIGTERM)
            # a trial that would never end by itself: it ends when the run is cancelled
            wait_until(sandbox.cancels[spec.trial_id].is_set, "the cancel event")

    sandbox = RecordingSandbox(gate)
    with pytest.raises(KeyboardInterrupt):
        ResearchLoop(config, sandbox, scored(0.95, 1.5), sleep=Sleeps(), leases=leases).run()

    assert leases.holders() == {}
    interrupted = [s.trial_id for s in sandbox.specs if is_candidate(s, 0.95) or is_candidate(s, 1.5)]
    assert len(interrupted) == 2 and sorted(sandbox.finished[-2:]) == sorted(interrupted)
    assert sorted(sandbox.cancelled) == sorted(interrupted), "both trials ended by the cancel event"
    run_dir = config.run_dir
    assert not ledger_has(run_dir, lambda r: r.trial_id in interrupted)
    assert Ledger(run_dir / "ledger.jsonl").verify().ok

    sandbox2 = RecordingSandbox()
    summary = ResearchLoop(config, sandbox2, scored(0.9, 1.4), sleep=Sleeps(), leases=leases).run()
    assert summary.stopped.startswith("max_trials reached: 4"), summary.stopped
    assert {s.trial_id for s in sandbox2.specs} >= set(interrupted), "the interrupted trials run again"
    records = assert_records_agree(config)
    assert sorted(r.description for r in records if r.kind == "candidate") == [
        "score 0.9",
        "score 0.95",
        "score 1.4",
        "score 1.5",
    ]
    for trial_id in interrupted:
        starts = (run_dir / "trials" / trial_id / "starts.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(starts) == 2
    assert leases.holders() == {}
