"""`ResearchLoop`: one controller session on one run folder. Build it, call `run()`.

`run()` takes the run lock, checks and repairs the folder (startup.py), then hands the trials to a
`Pool` of `config.workers` workers (pool.py; one worker is a pool of one), which claim their steps
from the `Scheduler` (scheduler.py: interrupted trials, baseline runs, the run canary, candidates,
until max_trials or a stop) and run each with `runner.execute` (plan, sandbox, judge, record).

Deliberate: the main thread only waits. Ctrl-C and SIGTERM reach it as KeyboardInterrupt, which sets
the run's cancel event (`ResearchLoop.cancel`; an embedding program may set it too); every worker
stops at once, nothing half-written reaches the records, and the KeyboardInterrupt propagates.
`max_trials` counts candidate trials in the run folder, not in this session, so a resumed run
finishes the same plan.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable

from filelock import FileLock
from filelock import Timeout as LockTimeout

from harness import canary
from harness.agents.base import Agent
from harness.config import RunConfig
from harness.loop.common import file_log, now_iso, read_program, sigterm_as_interrupt
from harness.loop.context import RunContext, SerialProgress
from harness.loop.errors import RunLocked
from harness.loop.outcomes import RunSummary, Seat
from harness.loop.pool import LeaseSource, Pool
from harness.loop.startup import start_up
from harness.progress import LogProgress, Progress
from sandbox.constants import Decision
from sandbox.engine.backend import Sandbox
from sandbox.incontainer.fileio import atomic_write as write_atomic

logger = logging.getLogger(__name__)


class ResearchLoop:
    """One controller session on one run folder. Build it, call `run()`."""

    def __init__(
        self,
        config: RunConfig,
        sandbox: Sandbox,
        agent: Agent,
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], None] | None = None,
        agent_factory: Callable[[int], Agent] | None = None,
        leases: LeaseSource | None = None,
    ) -> None:
        """`agent_factory(k)` builds worker k's agent (k >= 1; worker 0 uses `agent`); without one the
        workers share `agent`, one proposal at a time. `leases` (a `sandbox.engine.gpu` lease table) gives
        each worker its GPU or cpuset; None: the default for the profile when `config.workers` > 1,
        and no lease at all with one worker (harness/loop/pool.py). `sleep` replaces the controller's
        waits (tests); by default they wait on the cancel event."""
        self.config = config
        self.context = RunContext(config, sandbox, SerialProgress(progress or LogProgress()), sleep=sleep)
        self.agent_factory = agent_factory
        self.leases = leases
        self.main_seat = Seat(
            name=f"{socket.gethostname()}:{os.getpid()}",
            agent=agent,
            limits=config.limits,
            gpu_ids=config.gpu_ids,
        )

    @property
    def cancel(self) -> threading.Event:
        """The run's cancel event: setting it stops every worker as Ctrl-C does."""
        return self.context.cancel

    @property
    def recorded(self) -> int:
        return self.context.recorded

    def run(self) -> RunSummary:
        """Run until max_trials, the agent's end, or a stop. Ctrl-C/SIGTERM propagate as KeyboardInterrupt."""
        ctx = self.context
        ctx.program = read_program(self.config.program)
        ctx.paths.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(ctx.paths.lock)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            owner = ctx.paths.owner.read_text(encoding="utf-8").strip() if ctx.paths.owner.exists() else "?"
            raise RunLocked(
                f"another controller is running on {ctx.paths.root} ({owner}); "
                "stop it first, or choose another --run-dir"
            ) from None
        try:
            write_atomic(
                ctx.paths.owner, json.dumps({"worker": self.main_seat.name, "since": now_iso()}) + "\n"
            )
            with file_log(ctx.paths.log, thread_only=False), sigterm_as_interrupt():
                pending = start_up(ctx)
                ctx.progress.start(self._banner())
                try:
                    pool = Pool(ctx, self.main_seat, agent_factory=self.agent_factory, leases=self.leases)
                    stopped = pool.run(pending)
                finally:
                    ctx.progress.stop()
            return self._summary(stopped)
        finally:
            ctx.paths.owner.unlink(missing_ok=True)
            lock.release()

    def _banner(self) -> list[str]:
        c = self.config
        return [
            f"run {c.run_tag} in {c.run_dir}",
            f"profile {c.profile} · agent {self.main_seat.agent.name} · backend {self.context.sandbox.name}"
            f" · max trials {c.max_trials if c.max_trials is not None else 'unlimited'}"
            + (f" · {c.workers} workers" if c.workers > 1 else ""),
            *canary.banner(c.canary_interval),
        ]

    def _summary(self, stopped: str) -> RunSummary:
        ctx = self.context
        records = ctx.ledger.records()
        state = ctx.state(records)
        check = ctx.ledger.verify()
        return RunSummary(
            stopped=stopped,
            recorded=ctx.recorded,
            total_rows=len(records),
            candidates=sum(1 for r in records if r.kind == "candidate"),
            keeps=sum(1 for r in records if r.decision is Decision.KEEP),
            best_val_bpb=state.best.val_bpb if state.best else None,
            baseline_val_bpb=state.noise.mean if state.noise else None,
            threshold=state.noise.threshold if state.noise else None,
            last_hash=check.last_hash,
            changes=list(ctx.changes),
        )
