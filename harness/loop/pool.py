"""The workers of a session: `--workers N` threads, and a single worker is a pool of one (the same
code path). Each worker repeats: claim the next step from the `Scheduler`, plan it, run it
(`runner.execute`), release the claim.

- Leases. Before any trial starts, each worker leases its own device from a file-locked table
  (`sandbox.engine.gpu`): a GPU on the gpu profile, else a disjoint cpuset (the host's CPUs, or the
  configured `limits.cpuset_cpus`, split N ways). The worker's `Seat` carries it: GPU ids go to the
  container's `device_ids`, a cpuset replaces `limits.cpuset_cpus`. A lease is released when its
  worker ends, however it ends. One worker without a lease table leases nothing: its seat is the
  controller's own (the configured limits and GPU ids).
- Agents: worker 0 uses the loop's agent, worker k `agent_factory(k)`. Without a factory the workers
  share the one agent, and a worker holds it from its claim to the end of its proposal, so a shared
  queue (replay, a scripted test agent) hands out its items in index order.

Stopping:
- `StopRun` (max_trials reached, the agent has nothing left) ends that worker; the run ends when
  every worker has, with the first worker's reason.
- An exception in a worker ends it and releases its lease at once. The others finish the trial
  they are running, claim nothing more, and the run raises the first error. A second is logged.
- Ctrl-C or SIGTERM (a KeyboardInterrupt in the main thread, which only waits) sets the run's
  cancel event: every sandbox run, proposal and wait returns at once, each worker stops where it
  is, leases are released, and the interrupted trials (no ledger row) are re-run by the next `run`.
  A worker writing its records finishes them: record writing never looks at the event.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.agents.base import Agent, AgentFatal
from harness.config import RunConfig
from harness.loop.context import RunContext
from harness.loop.errors import AgentGaveUp, Cancelled, LoopError, StopRun
from harness.loop.outcomes import Seat
from harness.loop.runner import execute, plan_for
from harness.loop.scheduler import Halted, Scheduler, Stop
from harness.records.schemas import TrialPlan
from sandbox.engine.gpu import CpuSetLeases, GpuLeases, Lease, LeaseError, NoFreeDevice, parse_cpuset
from sandbox.engine.limits import Limits

logger = logging.getLogger(__name__)

LEASE_WAIT_S = 10.0  # a lease another process is about to release (a run that is stopping)
STOP_WAIT_S = 120.0  # after Ctrl-C, how long the workers get to clean up (two engine API timeouts)


class LeaseSource(Protocol):
    """What the pool needs of a lease table (`sandbox.engine.gpu.GpuLeases`, `CpuSetLeases`)."""

    kind: str
    resources: tuple[str, ...]

    def acquire(self, owner: str, count: int = 1, *, wait_s: float = 0.0, poll_s: float = 0.5) -> Lease: ...


def default_leases(config: RunConfig) -> LeaseSource:
    """A GPU per worker on the gpu profile; otherwise the CPUs (configured or all) split into N cpusets."""
    if config.profile == "gpu":
        return GpuLeases(devices=config.gpu_ids or None)
    configured = config.limits.cpuset_cpus
    cpus = sorted(parse_cpuset(configured)) if configured else None
    try:
        return CpuSetLeases(workers=config.workers, cpus=cpus)
    except ValueError as exc:  # more workers than CPUs
        raise LoopError(f"{exc}: use at most one worker per CPU (--workers)") from exc


def seat_limits(limits: Limits, lease: Lease) -> tuple[Limits, tuple[str, ...] | None]:
    """The limits and GPU ids (None: keep the configured ones) a trial runs with on this lease."""
    if lease.kind == "gpu":
        return limits, lease.resources
    if lease.kind == "cpuset":
        cpuset = ",".join(lease.resources)
        return Limits.model_validate(limits.model_dump() | {"cpuset_cpus": cpuset}), None
    raise ValueError(f"unknown lease kind {lease.kind!r}")


@dataclass
class _Outcome:
    kind: str  # "stop" | "halted" | "cancelled" | "error"
    reason: str
    error: BaseException | None = None


class Pool:
    """Runs a session's trials on `ctx.config.workers` workers (see the module docstring)."""

    def __init__(
        self,
        ctx: RunContext,
        main: Seat,
        *,
        agent_factory: Callable[[int], Agent] | None = None,
        leases: LeaseSource | None = None,
    ) -> None:
        self.ctx = ctx
        self.main = main
        self.agent_factory = agent_factory
        self.leases = leases
        self.workers = ctx.config.workers
        self.scheduler = Scheduler(ctx.config)
        self._lock = threading.Lock()
        self._outcomes: dict[int, _Outcome] = {}
        self._order: list[int] = []  # workers in the order they ended
        self._finished = threading.Event()
        self._agent_lock = threading.Lock()  # held by a worker using a shared agent (no factory)

    def run(self, pending: Sequence[TrialPlan]) -> str:
        """Run until every worker has stopped; the first stop reason, or the first worker's error."""
        self.scheduler = Scheduler(self.ctx.config, pending)
        leases: list[Lease | None] = []
        try:
            if self.leases is None and self.workers == 1:
                seats, leases = [self.main], [None]
            else:
                source = self.leases if self.leases is not None else default_leases(self.ctx.config)
                acquired = self._lease_all(source)
                leases = list(acquired)
                seats = [self._seat(k, lease) for k, lease in enumerate(acquired)]
            threads = [
                threading.Thread(target=self._work, args=(k, seat, lease), name=f"worker-{k}", daemon=True)
                for k, (seat, lease) in enumerate(zip(seats, leases, strict=True))
            ]
            for thread in threads:
                thread.start()
            self._wait(threads)
        finally:
            for lease in leases:
                _release(lease)
        return self._result()

    def _lease_all(self, source: LeaseSource) -> list[Lease]:
        leases: list[Lease] = []
        try:
            for k in range(self.workers):
                owner = f"{self.ctx.config.run_tag}/w{k}@{self.main.name}"
                leases.append(source.acquire(owner, wait_s=LEASE_WAIT_S))
        except NoFreeDevice as exc:
            for lease in leases:
                _release(lease)
            raise LoopError(
                f"cannot lease a {source.kind} for each of {self.workers} workers: {exc}. "
                "Run fewer --workers, or stop what holds them."
            ) from exc
        except BaseException:
            for lease in leases:
                _release(lease)
            raise
        for k, lease in enumerate(leases):
            logger.info("worker %d: %s %s", k, lease.kind, ",".join(lease.resources))
        return leases

    def _seat(self, k: int, lease: Lease) -> Seat:
        agent = self.main.agent
        if k > 0 and self.agent_factory is not None:
            try:
                agent = self.agent_factory(k)
            except AgentFatal as exc:
                raise AgentGaveUp(f"the agent for worker {k} cannot start: {exc}") from exc
        limits, gpu_ids = seat_limits(self.main.limits, lease)
        return Seat(
            name=f"{self.main.name}/w{k}",
            agent=agent,
            limits=limits,
            gpu_ids=self.main.gpu_ids if gpu_ids is None else gpu_ids,
        )

    def _wait(self, threads: Sequence[threading.Thread]) -> None:
        try:
            while any(t.is_alive() for t in threads):
                self._finished.wait(0.5)
                self._finished.clear()
                if self.ctx.cancel.is_set():  # cancelled from outside: wake the workers waiting for a claim
                    self.scheduler.halt("cancelled")
        except KeyboardInterrupt:
            alive = sum(t.is_alive() for t in threads)
            logger.warning("interrupted: stopping %d running worker(s)", alive)
            self.scheduler.halt("interrupted")
            self.ctx.cancel.set()
            deadline = time.monotonic() + STOP_WAIT_S
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in threads if t.is_alive()]
            if stuck:
                logger.error("%s did not stop within %.0f s; leaving them", ", ".join(stuck), STOP_WAIT_S)
            raise

    def _result(self) -> str:
        """The first stop reason; the first error raised (outcomes in the order the workers ended)."""
        ended = [self._outcomes[k] for k in self._order]
        errors = [o.error for o in ended if o.error is not None]
        for other in errors[1:]:
            logger.error("another worker also failed: %s", other)
        if errors:
            raise errors[0]
        stops = [o.reason for o in ended if o.kind == "stop"]
        return stops[0] if stops else "; ".join(dict.fromkeys(o.reason for o in ended)) or "no worker ran"

    # ------------------------------------------------------------------ one worker

    def _work(self, k: int, seat: Seat, lease: Lease | None) -> None:
        outcome = _Outcome("cancelled", "cancelled")
        try:
            while True:
                self.ctx.check_cancelled()
                token, plan = self._claim(seat)
                try:
                    execute(self.ctx, seat, plan)
                finally:
                    self.scheduler.release(token)
        except Cancelled as cancelled:
            logger.info("worker %d stopped: %s", k, cancelled)
            outcome = _Outcome("cancelled", "cancelled")
        except Halted as halted:
            outcome = _Outcome("halted", str(halted))
        except StopRun as stop:
            logger.info("stopping: %s", stop)
            outcome = _Outcome("stop", str(stop))
        except BaseException as exc:  # the run's error: raised again by run() once every worker ended
            logger.error("worker %d failed: %s", k, exc, exc_info=not isinstance(exc, LoopError))
            outcome = _Outcome("error", f"worker {k}: {exc}", exc)
            self.scheduler.halt(f"worker {k} failed: {exc}")
            with self._lock:
                others = len(self._outcomes) < self.workers - 1
            if others:
                logger.error(
                    "the other workers finish the trial they are running, then the run stops "
                    "(Ctrl-C stops them now)"
                )
        finally:
            try:
                _release(lease)
            finally:
                with self._lock:
                    self._outcomes[k] = outcome
                    self._order.append(k)
                self._finished.set()

    def _claim(self, seat: Seat) -> tuple[int, TrialPlan]:
        """The next trial for `seat`, claimed and planned; its claim is bound to the plan's id."""
        shared = self.agent_factory is None and self.workers > 1
        with self._agent_lock if shared else contextlib.nullcontext():
            token, step = self.scheduler.claim(self.ctx.ledger.records, self.ctx.spent_usd)
            if isinstance(step, Stop):
                raise StopRun(step.reason)
            try:
                plan = plan_for(self.ctx, seat, step)
            except BaseException:
                self.scheduler.release(token)
                raise
        self.scheduler.bind(token, plan.trial_id)
        return token, plan


def _release(lease: Lease | None) -> None:
    if lease is None:
        return
    try:
        lease.release()
    except LeaseError as exc:  # the table is unusable; the row is reclaimed once this process is gone
        logger.error("could not release %s: %s", lease, exc)
