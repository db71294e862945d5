"""What every worker of one session shares: the configuration, the sandbox, the run folder's records
(ledger, results.tsv, lineage), one progress view, and the run's cancel event.

Deliberate: the records are one of each, written under the ledger's lock; the progress view is
serialised (several threads feed it); every wait of the controller (retry backoff, a starvation
pause) waits on the cancel event, so Ctrl-C cuts it short."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness.agents.base import Usage
from harness.config import RunConfig, RunPaths
from harness.judge import JudgeState, replay
from harness.loop.common import now_iso
from harness.loop.errors import Cancelled
from harness.loop.outcomes import Seat
from harness.progress import Progress
from harness.records.chain import Ledger
from harness.records.lineage import Lineage
from harness.records.results import ResultsFile
from harness.records.schemas import AgentRecord, SpendRecord, TrialRecord, run_cost
from sandbox.engine.backend import Sandbox


class SerialProgress:
    """One progress view fed by several threads, one event at a time."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def start(self, banner: Sequence[str]) -> None:
        with self._lock:
            self.inner.start(banner)

    def phase(self, trial_id: str, text: str) -> None:
        with self._lock:
            self.inner.phase(trial_id, text)

    def recorded(self, record: TrialRecord, state: JudgeState) -> None:
        with self._lock:
            self.inner.recorded(record, state)

    def stop(self) -> None:
        with self._lock:
            self.inner.stop()


@dataclass
class RunContext:
    """One session's shared handles. `sleep` None: waits are cancel-event waits (tests inject a fake)."""

    config: RunConfig
    sandbox: Sandbox
    progress: Progress
    cancel: threading.Event = field(default_factory=threading.Event)
    sleep: Callable[[float], None] | None = None
    program: str = ""
    recorded: int = 0  # ledger rows written by this session
    changes: list[str] = field(default_factory=list)  # repairs made at start-up
    warned: set[str] = field(default_factory=set)  # one-time warnings already logged

    def __post_init__(self) -> None:
        self.paths = RunPaths(self.config.run_dir)
        self.ledger = Ledger(self.paths.ledger)
        self.results = ResultsFile(self.paths.results)
        self.lineage = Lineage(self.paths.lineage, self.config.run_tag)

    def state(self, records: Sequence[TrialRecord]) -> JudgeState:
        return replay((r.judged() for r in records), self.config.judge)

    def spent_usd(self) -> float:
        """What the agent has cost this run, as the ledger records it."""
        return run_cost(self.ledger.rows()).cost_usd

    def cost_note(self) -> str:
        """What the agent has cost so far, for the progress view ("" before any spend, without a cap)."""
        cap = self.config.max_cost_usd
        spent = run_cost(self.ledger.rows())
        if not spent.api_calls and cap is None:
            return ""
        return f" (${spent.cost_usd:.2f} spent so far" + (f" of ${cap:.2f})" if cap is not None else ")")

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("the run was cancelled")

    def pause(self, seconds: float) -> None:
        """A controller wait (retry backoff, starvation pause) that cancelling the run cuts short."""
        if self.sleep is not None:
            self.sleep(seconds)
        elif self.cancel.wait(seconds):
            raise Cancelled(f"the run was cancelled during a {seconds:.0f} s wait")
        self.check_cancelled()

    def record_spend(self, seat: Seat, usage: Usage, reason: str) -> None:
        """A ledger row for what a proposal that produced no trial cost (nothing when it cost nothing)."""
        if not usage.api_calls and not usage.cost_usd:
            return
        record = SpendRecord(
            worker=seat.name,
            reason=reason[:1000],
            agent=AgentRecord(name=seat.agent.name, model=usage.model, usage=usage),
            created_at=now_iso(),
        )
        self.ledger.append(record.to_row())
