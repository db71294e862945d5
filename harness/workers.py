"""Several trials at once on one run folder: `python -m harness run --workers N`.

`WorkerPool(loop).run(pending)` replaces the single worker's `ResearchLoop._session` when a run has
more than one worker (or is given a lease table). Each worker is a thread of the controller that
repeats: claim the next trial, run it (`ResearchLoop._execute`: sandbox, judge, confirmation re-run,
records), land it. What the workers share, and how:

- Leases. Before any trial starts, each worker leases its own device from a file-locked table
  (`sandbox.gpu`): a GPU on the gpu profile, else a disjoint cpuset (the host's CPUs, or the
  configured `limits.cpuset_cpus`, split N ways). The worker's `Seat` carries it: GPU ids go to the
  container's `device_ids`, a cpuset replaces `limits.cpuset_cpus`, which every container of the
  trial (holder, TRAIN, EVAL) is created with. A lease is released when its worker ends, however it
  ends; the pool releases them all again on its way out (releasing is idempotent).
- The ledger, results.tsv and the lineage: one of each. Rows are appended under the ledger's file
  lock; a trial is judged under that lock against the ledger as it is *then* (the best at the moment
  the trial lands, not when it started); every lineage write happens under the same lock.
- What to run next is decided under one condition variable, from the ledger plus the trials in
  flight: trial folders left without a ledger row by an earlier session first, then baseline runs
  (spread over the workers; a worker waits while the last ones run, since nothing can be judged
  before the baseline closes), then the run canary when it is due (on whichever worker asks first,
  one at a time; while one runs the others go on with candidates, unless the last canary failed),
  then candidates, each proposed from the best recorded at that moment, so a keep landed by one
  worker is the parent of every later proposal. `max_trials` counts the candidates in flight, so N
  workers never overshoot it, and each in-flight candidate gets its own `trial_index`, so a
  deterministic agent does not propose the same edit twice at once.
- Agents: worker 0 uses the loop's agent, worker k `agent_factory(k)` (the CLI builds one per worker
  except the replay agent, whose one folder must be played once). Without a factory the workers share
  the one agent, and a worker holds it from choosing the trial's index to the end of its proposal,
  so a shared queue (replay, a scripted test agent) hands out its items in index order.

Stopping:
- `_Stop` in a worker (max_trials reached, the agent has nothing left) ends that worker; the run ends
  when every worker has, with the first worker's reason.
- An exception in a worker (the loop's own error policy already retried what it retries: a
  `SandboxGaveUp`, `AgentGaveUp`, `BaselineFailed`, or a bug) ends that worker and releases its
  lease at once. The others finish the trial they are running, claim nothing more, and the run then
  raises the first error, as a single worker would. A second error is logged.
- Ctrl-C or SIGTERM (a KeyboardInterrupt in the main thread) interrupts every worker at once
  (harness/interrupts.py): sandboxes clean up, leases are released, nothing half-written reaches
  the records, and the interrupted trials are re-run by the next `run` like any others.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from harness import interrupts
from harness.agents.base import Agent, AgentFatal
from harness.config import RunConfig
from harness.judge import JudgeState, replay
from harness.loop import AgentGaveUp, LoopError, ResearchLoop, Seat, _Stop
from harness.progress import Progress
from harness.records.schemas import TrialPlan, TrialRecord
from sandbox.constants import Decision
from sandbox.engine.gpu import CpuSetLeases, GpuLeases, Lease, LeaseError, NoFreeDevice, parse_cpuset
from sandbox.engine.limits import Limits

logger = logging.getLogger(__name__)

LEASE_WAIT_S = 10.0  # a lease another process is about to release (a run that is stopping)
CLAIM_WAIT_S = 1.0  # how often a worker waiting for the baseline looks at the ledger again
STOP_WAIT_S = 120.0  # after Ctrl-C, how long the workers get to clean up (two engine API timeouts)


class LeaseSource(Protocol):
    """What the pool needs of a lease table (`sandbox.gpu.GpuLeases`, `CpuSetLeases`)."""

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


class _Halted(Exception):
    """The pool is stopping (another worker failed, or Ctrl-C): claim nothing more."""


@dataclass
class _Outcome:
    kind: str  # "stop" | "halted" | "interrupted" | "error"
    reason: str
    error: BaseException | None = None


class _SerialProgress:
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


def _interruptible_sleep(seconds: float) -> None:
    guard = interrupts.current()
    if guard is None:
        time.sleep(seconds)
    else:
        guard.sleep(seconds)


class WorkerPool:
    """Runs a session of `loop` with `loop.config.workers` workers (see the module docstring)."""

    def __init__(self, loop: ResearchLoop) -> None:
        self.loop = loop
        self.workers = loop.config.workers
        self._cv = threading.Condition()
        self._pending: list[TrialPlan] = []
        self._running: dict[int, str] = {}  # claim token -> the trial kind ("baseline", "canary", ...)
        self._tokens = itertools.count()
        self._halted: str | None = None
        self._outcomes: dict[int, _Outcome] = {}
        self._order: list[int] = []  # workers in the order they ended
        self._finished = threading.Event()
        self._agent_lock = threading.Lock()  # held by a worker using a shared agent (no factory)
        self._guards: list[interrupts.Guard] = []

    # ------------------------------------------------------------------ the session

    def run(self, pending: Sequence[TrialPlan]) -> str:
        """Run until every worker has stopped; the first stop reason, or the first worker's error."""
        self._pending = list(pending)
        source = self.loop.leases if self.loop.leases is not None else default_leases(self.loop.config)
        with self._sleep_and_progress():
            leases = self._lease_all(source)
            try:
                seats = [self._seat(k, lease) for k, lease in enumerate(leases)]
                self._guards = [interrupts.Guard(seat.name) for seat in seats]
                threads = [
                    threading.Thread(
                        target=self._work,
                        args=(k, seat, lease, self._guards[k]),
                        name=f"worker-{k}",
                        daemon=True,
                    )
                    for k, (seat, lease) in enumerate(zip(seats, leases, strict=True))
                ]
                for thread in threads:
                    thread.start()
                self._wait(threads)
            finally:
                for lease in leases:
                    self._release(lease)
        return self._result()

    def _lease_all(self, source: LeaseSource) -> list[Lease]:
        leases: list[Lease] = []
        try:
            for k in range(self.workers):
                owner = f"{self.loop.config.run_tag}/w{k}@{self.loop.main_seat.name}"
                leases.append(source.acquire(owner, wait_s=LEASE_WAIT_S))
        except NoFreeDevice as exc:
            for lease in leases:
                self._release(lease)
            raise LoopError(
                f"cannot lease a {source.kind} for each of {self.workers} workers: {exc}. "
                "Run fewer --workers, or stop what holds them."
            ) from exc
        except BaseException:
            for lease in leases:
                self._release(lease)
            raise
        for k, lease in enumerate(leases):
            logger.info("worker %d: %s %s", k, lease.kind, ",".join(lease.resources))
        return leases

    def _seat(self, k: int, lease: Lease) -> Seat:
        main = self.loop.main_seat
        agent: Agent = main.agent
        if k > 0 and self.loop.agent_factory is not None:
            try:
                agent = self.loop.agent_factory(k)
            except AgentFatal as exc:
                raise AgentGaveUp(f"the agent for worker {k} cannot start: {exc}") from exc
        limits, gpu_ids = seat_limits(main.limits, lease)
        return Seat(
            name=f"{main.name}/w{k}",
            agent=agent,
            limits=limits,
            gpu_ids=main.gpu_ids if gpu_ids is None else gpu_ids,
        )

    @contextlib.contextmanager
    def _sleep_and_progress(self) -> Iterator[None]:
        """Backoff sleeps an interruption can cut short; a progress view safe for several threads."""
        loop = self.loop
        sleep, progress = loop.sleep, loop.progress
        if sleep is time.sleep:
            loop.sleep = _interruptible_sleep
        loop.progress = _SerialProgress(progress)
        try:
            yield
        finally:
            loop.sleep, loop.progress = sleep, progress

    def _wait(self, threads: Sequence[threading.Thread]) -> None:
        try:
            while any(t.is_alive() for t in threads):
                self._finished.wait(0.5)
                self._finished.clear()
        except KeyboardInterrupt:
            alive = sum(t.is_alive() for t in threads)
            logger.warning("interrupted: stopping %d running worker(s)", alive)
            self._halt("interrupted")
            for guard in self._guards:
                guard.interrupt()
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
        return stops[0] if stops else "; ".join(o.reason for o in ended) or "no worker ran"

    # ------------------------------------------------------------------ one worker

    def _work(self, k: int, seat: Seat, lease: Lease, guard: interrupts.Guard) -> None:
        guard.bind()
        outcome = _Outcome("interrupted", "interrupted")
        try:
            guard.open()
            with self.loop.seated(seat):
                while True:
                    token, plan = self._claim()
                    try:
                        self.loop._execute(plan)
                    finally:
                        self._land(token)
        except KeyboardInterrupt:
            outcome = _Outcome("interrupted", "interrupted")
        except _Halted as halted:
            outcome = _Outcome("halted", str(halted))
        except _Stop as stop:
            logger.info("worker %d stopping: %s", k, stop)
            outcome = _Outcome("stop", str(stop))
        except BaseException as exc:  # the run's error: raised again by run() once every worker ended
            logger.error("worker %d failed: %s", k, exc, exc_info=not isinstance(exc, LoopError))
            outcome = _Outcome("error", f"worker {k}: {exc}", exc)
            if self._halt(f"worker {k} failed: {exc}"):
                logger.error(
                    "the other workers finish the trial they are running, then the run stops "
                    "(Ctrl-C stops them now)"
                )
        finally:
            guard.close_finally()
            try:
                self._release(lease)
            finally:
                with self._cv:
                    self._outcomes[k] = outcome
                    self._order.append(k)
                    self._cv.notify_all()
                self._finished.set()

    def _claim(self) -> tuple[int, TrialPlan]:
        """The next trial for the calling worker, claimed: the order of `ResearchLoop._session`
        (interrupted trials, baseline runs, the run canary when due, candidates), with the trials
        other workers are running counted."""
        loop = self.loop
        shared = loop.agent_factory is None
        with self._agent_lock if shared else contextlib.nullcontext():
            with self._cv:
                while True:
                    if self._halted is not None:
                        raise _Halted(self._halted)
                    if self._pending:
                        plan = self._pending.pop(0)
                        return self._reserve(plan.kind), plan
                    records = loop.ledger.records()
                    state = replay((r.judged() for r in records), loop.config.judge)
                    if not state.ready:
                        done = sum(1 for r in records if r.decision is Decision.BASELINE)
                        running = self._count("baseline")
                        if done + running < loop.config.judge.baseline_repeats:
                            token = self._reserve("baseline")
                            baseline: int | None = done + running
                            break
                        self._cv.wait(CLAIM_WAIT_S)  # the last baseline runs are running
                        continue
                    if not self._count("canary"):
                        canary_plan = loop._plan_canary(records)
                        if canary_plan is not None:
                            return self._reserve("canary"), canary_plan
                    elif _last_canary_failed(records):
                        self._cv.wait(CLAIM_WAIT_S)  # nothing goes on until a canary passes again
                        continue
                    running = self._count("candidate")
                    loop._check_continue(records, in_flight=running)
                    token = self._reserve("candidate")
                    baseline = None
                    index = sum(1 for r in records if r.kind == "candidate") + running
                    break
            try:
                if baseline is not None:
                    return token, loop._plan_baseline(records, done=baseline)
                return token, loop._plan_candidate(records, state, index=index)
            except BaseException:
                self._land(token)
                raise

    def _reserve(self, kind: str) -> int:
        token = next(self._tokens)
        self._running[token] = kind
        return token

    def _count(self, kind: str) -> int:
        return sum(1 for k in self._running.values() if k == kind)

    def _land(self, token: int) -> None:
        with self._cv:
            self._running.pop(token, None)
            self._cv.notify_all()

    def _halt(self, why: str) -> bool:
        """Claim nothing more. True when other workers are still running."""
        with self._cv:
            if self._halted is None:
                self._halted = why
            self._cv.notify_all()
            return len(self._outcomes) < self.workers - 1

    @staticmethod
    def _release(lease: Lease) -> None:
        try:
            lease.release()
        except LeaseError as exc:  # the table is unusable; the row is reclaimed once this process is gone
            logger.error("could not release %s: %s", lease, exc)


def _last_canary_failed(records: Sequence[TrialRecord]) -> bool:
    last = next((r for r in reversed(records) if r.kind == "canary"), None)
    return last is not None and last.canary is not None and not last.canary.passed
