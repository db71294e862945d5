"""Helpers for the `--workers` tests: a fake sandbox that records which lease each running trial
holds, a lease table on labels (no real CPUs are pinned: the fake sandbox runs nothing), and the
consistency checks a run with several workers must pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.judge import replay
from harness.records.chain import Ledger, verify
from harness.records.lineage import PENDING, Lineage
from harness.records.results import ResultsFile, format_row, rows_for
from harness.records.schemas import TrialRecord
from sandbox.constants import Decision
from sandbox.engine.gpu import CpuSetLeases
from sandbox.verdict import TrialCancelled, TrialSpec, Verdict
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, edit, run_config, with_score

WAIT_S = 30.0  # a test that waits this long for an event has failed (never a timing threshold)


def leases_for(tmp_path: Path, workers: int) -> CpuSetLeases:
    """A private lease table of `workers` one-CPU sets named "0", "1", ..."""
    return CpuSetLeases(tmp_path / "leases.json", workers=workers, cpus=list(range(workers)))


def workers_config(tmp_path: Path, workers: int, **overrides: Any) -> RunConfig:
    return run_config(tmp_path, workers=workers, **overrides)


def scored(*scores: float) -> ScriptedAgent:
    """An agent proposing the current best with each score in turn ("score 0.95", ...), then done."""
    return ScriptedAgent([edit(partial(with_score, score=s), f"score {s}") for s in scores])


def lease_of(spec: TrialSpec) -> str:
    return spec.limits.cpuset_cpus or ",".join(spec.gpu_ids) or "(none)"


class RecordingSandbox:
    """Wraps FakeSandbox; records, under a lock, which lease every running trial holds.

    `gate(spec)` runs inside the trial (before the fake verdict) in the worker's thread: tests block
    it on events to build races (a gate that must end when the run is cancelled waits on
    `cancels[spec.trial_id]`). A lease held by two running trials at once is a clash. Like a real
    engine it honours the cancel event: a trial cancelled before or during its run raises
    TrialCancelled.
    """

    name = "fake"

    def __init__(
        self,
        gate: Callable[[TrialSpec], None] | None = None,
        *,
        noise: float = 0.0,
        inner: FakeSandbox | None = None,
    ) -> None:
        self.inner = inner if inner is not None else FakeSandbox(noise=noise)
        self.gate = gate
        self.lock = threading.Lock()
        self.running: dict[str, str] = {}  # sandbox trial id -> lease
        self.clashes: list[tuple[str, str, str]] = []
        self.most_at_once = 0
        self.specs: list[TrialSpec] = []
        self.finished: list[str] = []  # trials whose run_trial returned or raised (cleanup ran)
        self.cancels: dict[str, threading.Event] = {}  # sandbox trial id -> the event it was given
        self.cancelled: list[str] = []  # trials that ended because their cancel event was set

    def run_trial(self, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
        lease = lease_of(spec)
        with self.lock:
            self.specs.append(spec)
            for other, held in self.running.items():
                if held == lease:
                    self.clashes.append((spec.trial_id, other, lease))
            self.running[spec.trial_id] = lease
            self.most_at_once = max(self.most_at_once, len(self.running))
            self.cancels[spec.trial_id] = cancel if cancel is not None else threading.Event()
        try:
            if self.gate is not None:
                self.gate(spec)
            return self.inner.run_trial(spec, cancel)
        except TrialCancelled:
            with self.lock:
                self.cancelled.append(spec.trial_id)
            raise
        finally:
            with self.lock:
                del self.running[spec.trial_id]
                self.finished.append(spec.trial_id)


def wait_until(condition: Callable[[], bool], what: str, *, poll_s: float = 0.01) -> None:
    """Poll `condition` in short sleeps; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def ledger_has(run_dir: Path, predicate: Callable[[TrialRecord], bool]) -> bool:
    return any(predicate(r) for r in Ledger(run_dir / "ledger.jsonl").records())


def assert_records_agree(config: RunConfig, *, unrecorded: Collection[str] = ()) -> list[TrialRecord]:
    """The invariants of a run folder written by several workers at once.

    The ledger verifies; results.tsv holds exactly the ledger's rows in the ledger's order; trial ids
    are unique and every trial folder but those `unrecorded` (interrupted) has a row; every candidate was judged against the best the
    ledger held just before its row (the best at the moment it landed); the branch is at the last
    keep and no commit is left pending.
    """
    run_dir = config.run_dir
    check = verify(run_dir / "ledger.jsonl")
    assert check.ok, check.bad
    records = Ledger(run_dir / "ledger.jsonl").records()
    ids = [r.trial_id for r in records]
    assert len(ids) == len(set(ids)), f"duplicated trial: {ids}"
    folders = sorted(p.name for p in (run_dir / "trials").iterdir() if p.is_dir())
    assert sorted([*ids, *unrecorded]) == folders, "every trial folder has exactly one ledger row"
    tsv = ResultsFile(run_dir / "results.tsv").read()
    assert [format_row(r) for r in tsv] == [format_row(r) for r in rows_for(records)]
    for i, record in enumerate(records):
        if record.judge is None:
            continue
        state = replay((r.judged() for r in records[:i]), config.judge)
        assert state.best is not None
        assert record.judge["bar"] == state.best.val_bpb, f"{record.trial_id} was judged on a stale best"
    lineage = Lineage(run_dir / "lineage", config.run_tag)
    keeps = [r for r in records if r.decision is Decision.KEEP]
    assert lineage.head() == (keeps[-1].candidate_commit if keeps else lineage.root())
    assert set(lineage.refs(PENDING)) == set(unrecorded), "only unrecorded trials are pending"
    return records
