"""The research loop: baseline, then propose, run, judge and record, until told to stop.

One `ResearchLoop.run()` call is one controller session on one run folder:

1. Start-up: check program.md, take the run lock, repair a torn ledger tail (only that), verify
   the ledger (a run never continues on edited history), open the lineage, append the results.tsv
   rows a crash left out, and sort out trial folders that have no ledger row.
2. Baseline: the starting train.py runs `baseline_repeats` times with different seeds; each run is
   a trial of its own (decision `baseline`). The judge's noise floor and bar come from them. A
   baseline run that fails stops the run: nothing can be judged against a broken starting point.
3. Candidates, until `max_trials` candidate trials are in the run folder (None: forever): the
   agent proposes from a context built from the ledger; the proposal is validated, committed to
   the lineage, written to its trial folder, run by the sandbox, judged (a would-be keep is confirmed
   on paired runs of it and the current best, harness/judge.py), recorded in the ledger then
   results.tsv, and a keep advances the branch.

Deliberate choices:
- A proposal that does not parse, or that changes nothing, is recorded without running it, as
  status `crash` / decision `crash` with the reason ("does not parse: ...", "no change: ..."), so
  results.tsv gives it `0.000000` like any trial without a score, the agent sees why in its next
  context, and the loop goes on. `invalid_streak` such proposals in a row stop the run.
- Failures that are nobody's verdict are exceptions, retried a bounded number of times, and never
  written to the ledger: SandboxError (backoff, then the run stops with the sandbox's message;
  DataMissing and ImageMissing are not retried, a retry cannot fix them), AgentError (backoff,
  then stop), AgentFatal (stop at once), AgentExhausted (the replay folder is done: a clean end).
- A run the host starved of compute (status `starved`, sandbox/compute.py) is not a result: it is
  moved to the trial's `starved/<n>/`, the loop waits (`retries.starved_backoff_s`, doubling; in the
  log and the live view) and runs it again; `retries.starved_attempts` in a row pause the run
  (`HostStarved`, nothing recorded for the trial, which the next start re-runs; a paused start does
  not count towards `trial_starts`). Starved runs are never ledger rows: the trial's row lists them.
- Crash safety: each trial's records are written in a fixed order (trial folder and pending
  commit, then ledger row, results.tsv row, lineage ref) with SIGINT/SIGTERM held back during the
  last three. On the next start, a trial folder with a `trial.json` but no ledger row is re-run
  (its earlier partial output moved under `interrupted/`) up to `trial_starts` times, then
  abandoned (`<id>.abandoned`, its commit under refs/autoresearch/orphaned/); a folder without
  `trial.json` was never complete and is abandoned at once. Trial ids are never reused.
- `max_trials` counts candidate trials in the run folder, not in this session, so a resumed run
  finishes the same plan.
- Several workers on one run folder (`--workers N`, harness/workers.py): ids are allocated with an
  atomic mkdir, the final judgement is made from the ledger re-read under its lock (so a keep is
  judged against the best at the moment it lands, not when it started), and every write to the
  lineage happens under that same lock. The run lock is the controller's, not a worker's. Each
  worker runs in a `Seat` (its name, agent, and the limits and GPU ids its lease gives it), which
  the methods below read through `self.seat`; a single worker sits in the main thread's seat.
- The agent as a researcher: its notes (`Proposal.notes`) are stored as notes/<trial_id>.md with their
  hash in that trial's row, and the newest recorded version goes into every later context (so they
  survive a resume); `view_trial` looks up recorded trials (never a path, nothing of the evaluator's
  report beyond the verdict); the history is the whole run with each score's delta to the baseline.
- Cost caps: `max_cost_usd` (the run) is checked before each proposal against the cost the ledger
  records (trial rows, `program` rows, and `spend` rows for proposals that produced no trial); the
  agent checks the per-proposal caps. Either stops the run with CapReached (exit 9), resumable with a
  higher cap.
- Program evolution (opt-in, harness/program.py) runs just before a candidate is planned when due.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock
from filelock import Timeout as LockTimeout

from harness import canary, interrupts
from harness import program as programs
from harness.agents.base import (
    LOG_TAIL_LIMIT,
    Agent,
    AgentCapReached,
    AgentContext,
    AgentError,
    AgentExhausted,
    AgentFatal,
    HistoryRow,
    LastTrial,
    ProgramContext,
    ProgramEditor,
    Proposal,
    TrialLookup,
    Usage,
)
from harness.config import RunConfig, RunPaths, TrialPaths
from harness.judge import Action, Judgement, JudgeState, code_lines, judge, judge_paired, replay
from harness.progress import LogProgress, Progress
from harness.records.chain import Ledger
from harness.records.lineage import Lineage
from harness.records.manifest import hash_tree, manifest_for, manifest_text
from harness.records.results import ResultsFile, rows_for, sanitize_description
from harness.records.schemas import (
    AgentRecord,
    ProgramRecord,
    RunMeta,
    RunRecord,
    SpendRecord,
    StarvedAttempt,
    TrialFacts,
    TrialPlan,
    TrialRecord,
    run_cost,
)
from sandbox import constants as C
from sandbox.constants import Decision, Status
from sandbox.engine.backend import Sandbox
from sandbox.engine.limits import Limits
from sandbox.incontainer.fileio import atomic_write as write_atomic
from sandbox.incontainer.fileio import sha256_file
from sandbox.verdict import DataMissing, ImageMissing, SandboxError, TrialSpec, Verdict

if TYPE_CHECKING:
    from harness.workers import LeaseSource

logger = logging.getLogger(__name__)

TRIAL_ID = re.compile(r"^t(\d{4,})$")
TRIAL_FOLDER = re.compile(r"^t(\d{4,})(\..*)?$")
MAX_TRAIN_PY_BYTES = 1_000_000
CONFIRM_SUFFIX = "-c1"
STARVED_BACKOFF_MAX_S = 600.0
RUN_FOLDER = re.compile(r"^run-\d+$")  # a confirmation run's folder (TrialPaths.run_dir)


# --------------------------------------------------------------------------- errors


class LoopError(Exception):
    """The run cannot go on; the message says why and what to do."""


class ProgramMissing(LoopError):
    pass


class RunLocked(LoopError):
    pass


class RunMismatch(LoopError):
    pass


class BaselineFailed(LoopError):
    pass


class SandboxGaveUp(LoopError):
    pass


class AgentGaveUp(LoopError):
    pass


class InvalidStreak(LoopError):
    pass


class CapReached(LoopError):
    """A cost or token cap was reached: the run stops cleanly; `cap` names the setting."""

    def __init__(self, message: str, *, cap: str) -> None:
        super().__init__(message)
        self.cap = cap


class HostStarved(LoopError):
    """Runs kept coming back `starved`: the host is too busy to measure anything; the run pauses."""


class IsolationBroken(LoopError):
    """The run canary (a known cheat, harness/canary.py) was not rejected: isolation or evaluator broken."""


# --------------------------------------------------------------------------- models


@dataclass
class RunSummary:
    stopped: str  # why the session ended
    recorded: int  # ledger rows written by this session
    total_rows: int
    candidates: int
    keeps: int
    best_val_bpb: float | None
    baseline_val_bpb: float | None
    threshold: float | None
    last_hash: str
    changes: list[str] = field(default_factory=list)  # repairs made at start-up


class _Stop(Exception):
    """Ends the candidate loop cleanly (max_trials reached, the agent has nothing left)."""


@dataclass(frozen=True)
class RunRole:
    """Whose train.py a run of a trial ran: the candidate's, or (paired confirmation) the best's."""

    role: Literal["candidate", "best"] = "candidate"
    commit: str | None = None  # the best's commit; None: the trial's candidate
    pair: int = 0  # 0: the first run; k: the k-th confirmation pair


@dataclass(frozen=True)
class Seat:
    """Who runs a trial: the worker's name, its agent, and the limits and GPU ids its lease gives it."""

    name: str
    agent: Agent
    limits: Limits
    gpu_ids: tuple[str, ...] = ()


# --------------------------------------------------------------------------- helpers


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def derive_seed(base: int, *parts: object) -> int:
    """A deterministic 31-bit seed from the run's base seed and a label (different labels, different seeds)."""
    digest = hashlib.sha256("/".join(str(p) for p in (base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def unified_diff(parent: str, candidate: str, *, parent_label: str, candidate_label: str) -> str:
    return "".join(
        difflib.unified_diff(
            parent.splitlines(keepends=True),
            candidate.splitlines(keepends=True),
            fromfile=f"a/train.py ({parent_label})",
            tofile=f"b/train.py ({candidate_label})",
        )
    )


def validate_proposal(text: str, parent: str) -> str | None:
    """Why a proposed train.py will not be run, or None when it may run."""
    if text.replace("\r\n", "\n") == parent.replace("\r\n", "\n"):
        return "no change: the proposal is identical to its parent"
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_TRAIN_PY_BYTES:
        return f"too large: {size} bytes (the limit is {MAX_TRAIN_PY_BYTES})"
    try:
        ast.parse(text, filename="train.py")
    except SyntaxError as exc:
        return f"does not parse: {exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError, MemoryError) as exc:
        return f"does not parse: {exc}"
    return None


def read_program(path: Path) -> str:
    """program.md's text; a clear message when it is missing (the agent cannot work without it)."""
    if not path.is_file():
        raise ProgramMissing(
            f"program.md not found at {path}: it tells the agent what it may change and how. "
            "Write one (start from the reference autoresearch program.md) next to train.py, "
            'or point to it with --program / `program = "..."` in autoresearch.toml.'
        )
    return path.read_text(encoding="utf-8")


def read_tail(path: Path, limit: int = LOG_TAIL_LIMIT * 2) -> str:
    """The last `limit` bytes of a log as text (raw and untrusted: the agent fences it)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        model=a.model or b.model,
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_read_input_tokens=a.cache_read_input_tokens + b.cache_read_input_tokens,
        cache_creation_input_tokens=a.cache_creation_input_tokens + b.cache_creation_input_tokens,
        cost_usd=a.cost_usd + b.cost_usd,
        api_calls=a.api_calls + b.api_calls,
    )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a trial's records are written; deliver them afterwards."""
    if threading.current_thread() is not threading.main_thread():
        with interrupts.held():  # a worker thread: its controller's interruption waits instead
            yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]} received while writing records")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C (a KeyboardInterrupt), so `finally` blocks clean up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _file_log(path: Path, *, thread_only: bool) -> Iterator[None]:
    """Copy the controller's log records (harness.* and sandbox.*) into `path` while inside."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    if thread_only:
        ident = threading.get_ident()
        handler.addFilter(lambda record: record.thread == ident)
    loggers = [logging.getLogger("harness"), logging.getLogger("sandbox")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)  # the file logs are the audit trail: always at least INFO
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


def keeps_between(records: Sequence[TrialRecord], start: str, end: str) -> list[tuple[float, int]] | None:
    """The keeps that moved the best from commit `start` to `end`, oldest first, each as (its mean
    paired difference against its predecessor, its pairs); None when one was not judged on pairs."""
    kept = {r.candidate_commit: r for r in records if r.decision is Decision.KEEP}
    chain: list[tuple[float, int]] = []
    commit = end
    while commit != start:
        record = kept.get(commit)
        j = record.judge if record is not None else None
        if not j or j.get("mean_diff") is None or not j.get("best_commit") or len(chain) > len(records):
            return None
        chain.append((float(j["mean_diff"]), len(j.get("pairs") or []) or 1))
        commit = str(j["best_commit"])
    return chain[::-1]


# --------------------------------------------------------------------------- the loop


class ResearchLoop:
    """One controller session on one run folder. Build it, call `run()`."""

    def __init__(
        self,
        config: RunConfig,
        sandbox: Sandbox,
        agent: Agent,
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        agent_factory: Callable[[int], Agent] | None = None,
        leases: LeaseSource | None = None,
    ) -> None:
        """`agent_factory(k)` builds worker k's agent (k >= 1; worker 0 uses `agent`); without one the
        workers share `agent`, one proposal at a time. `leases` (a `sandbox.gpu` lease table) gives
        each worker its GPU or cpuset; None: the default for the profile when `config.workers` > 1,
        and no lease at all with one worker (see harness/workers.py)."""
        self.config = config
        self.sandbox = sandbox
        self.progress: Progress = progress or LogProgress()
        self.sleep = sleep
        self.agent_factory = agent_factory
        self.leases = leases
        self.paths = RunPaths(config.run_dir)
        self.ledger = Ledger(self.paths.ledger)
        self.results = ResultsFile(self.paths.results)
        self.lineage = Lineage(self.paths.lineage, config.run_tag)
        self.main_seat = Seat(
            name=f"{socket.gethostname()}:{os.getpid()}",
            agent=agent,
            limits=config.limits,
            gpu_ids=config.gpu_ids,
        )
        self._seats = threading.local()
        self.program = ""
        self.recorded = 0
        self.changes: list[str] = []
        self._warned: set[str] = set()  # one-time warnings already logged

    @property
    def seat(self) -> Seat:
        """The calling worker's seat (the main seat outside worker threads)."""
        seat: Seat = getattr(self._seats, "seat", self.main_seat)
        return seat

    @property
    def worker(self) -> str:
        return self.seat.name

    @property
    def agent(self) -> Agent:
        return self.seat.agent

    @contextlib.contextmanager
    def seated(self, seat: Seat) -> Iterator[None]:
        """Run the calling thread's trials in `seat`."""
        self._seats.seat = seat
        try:
            yield
        finally:
            del self._seats.seat

    # ------------------------------------------------------------------ session

    def run(self) -> RunSummary:
        """Run until max_trials, the agent's end, or a stop. Ctrl-C/SIGTERM propagate as KeyboardInterrupt."""
        self.program = read_program(self.config.program)
        self.paths.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.paths.lock)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            owner = self.paths.owner.read_text(encoding="utf-8").strip() if self.paths.owner.exists() else "?"
            raise RunLocked(
                f"another controller is running on {self.paths.root} ({owner}); "
                "stop it first, or choose another --run-dir"
            ) from None
        try:
            write_atomic(self.paths.owner, json.dumps({"worker": self.worker, "since": now_iso()}) + "\n")
            with _file_log(self.paths.log, thread_only=False), sigterm_as_interrupt():
                pending = self._start_up()
                self.progress.start(self._banner())
                try:
                    if self.config.workers > 1 or self.leases is not None:
                        from harness.workers import WorkerPool

                        stopped = WorkerPool(self).run(pending)
                    else:
                        stopped = self._session(pending)
                finally:
                    self.progress.stop()
            return self._summary(stopped)
        finally:
            self.paths.owner.unlink(missing_ok=True)
            lock.release()

    def _banner(self) -> list[str]:
        c = self.config
        return [
            f"run {c.run_tag} in {c.run_dir}",
            f"profile {c.profile} · agent {self.agent.name} · backend {self.sandbox.name}"
            f" · max trials {c.max_trials if c.max_trials is not None else 'unlimited'}"
            + (f" · {c.workers} workers" if c.workers > 1 else ""),
            *canary.banner(c.canary_interval),
        ]

    # ------------------------------------------------------------------ start-up and recovery

    def _start_up(self) -> list[TrialPlan]:
        repaired = self.ledger.repair_torn_tail()
        if repaired:
            self.changes.append(f"ledger: {repaired}")
        check = self.ledger.verify()
        if not check.ok:
            raise LoopError(
                f"the ledger {self.paths.ledger} does not verify: {check.bad}. The run will not continue "
                "on edited history: restore ledger.jsonl from a copy, or start a new run folder "
                f"(`python -m harness verify-ledger {self.paths.root}` shows the same)."
            )
        with self.ledger.locked():
            records = self.ledger.records()
            appended = self.results.sync(rows_for(records))
        if appended:
            self.changes.append(f"results.tsv: appended {appended} row(s) from the ledger")
        meta = self._meta(records)
        if self.lineage.head() is None:
            if records:
                raise LoopError(
                    f"{self.paths.lineage} is missing but the ledger has rows; restore it from a copy"
                )
            meta = None  # nothing was recorded yet: start afresh from the current train.py
        root = self.lineage.ensure_root(self._starting_train_py())
        if meta is None:
            start = self.lineage.read(root)
            meta = RunMeta(
                run_tag=self.config.run_tag,
                profile=self.config.profile,
                agent=self.config.agent,
                backend=self.config.backend,
                created_at=now_iso(),
                root_commit=root,
                start_sha256=hashlib.sha256(start.encode()).hexdigest(),
                judge=self.config.judge,
            )
            write_atomic(self.paths.run_json, meta.model_dump_json(indent=2) + "\n")
        pending = self._pending_trials(records)
        state = replay((r.judged() for r in records), self.config.judge)
        best = state.best.commit if state.best is not None else root
        decided = {r.trial_id: (r.decision, r.candidate_commit) for r in records if r.kind == "candidate"}
        if self.config.judge.baseline_repeats == 1:
            logger.warning("baseline_repeats = 1 gives no noise estimate: the threshold is min_delta alone")
        self.changes += self.lineage.reconcile(
            best_commit=best, decided=decided, in_progress={p.trial_id for p in pending}
        )
        applied = [p for p in self.ledger.programs() if p.outcome == "applied" and p.commit]
        if applied and self.lineage.program_head() != applied[-1].commit:
            assert applied[-1].commit is not None
            self.lineage.set_program(applied[-1].commit, why=f"{applied[-1].program_id} (reconciled)")
            self.changes.append(f"lineage: program ref -> {applied[-1].program_id} (as the ledger records)")
        return pending

    def _meta(self, records: Sequence[TrialRecord]) -> RunMeta | None:
        if not self.paths.run_json.exists():
            if records:
                raise LoopError(f"{self.paths.run_json} is missing but the ledger has rows; restore it")
            return None
        meta = RunMeta.model_validate_json(self.paths.run_json.read_text(encoding="utf-8"))
        c = self.config
        if meta.profile != c.profile:
            raise RunMismatch(
                f"{c.run_dir} holds a {meta.profile}-profile run; its numbers cannot be compared with "
                f"profile {c.profile}. Use --profile {meta.profile} or another --run-dir."
            )
        if meta.run_tag != c.run_tag:
            raise RunMismatch(
                f"{c.run_dir} was started with run tag {meta.run_tag!r}, not {c.run_tag!r}; "
                f"use run_tag = {meta.run_tag!r} or another --run-dir"
            )
        for what, was, now in (
            ("agent", meta.agent, c.agent),
            ("backend", meta.backend, c.backend),
            ("judge settings", meta.judge, c.judge),
        ):
            if was != now:
                logger.warning("this run was started with %s %s; continuing with %s", what, was, now)
        return meta

    def _starting_train_py(self) -> str:
        if self.lineage.head() is not None:
            return ""  # the lineage already holds it; ensure_root does not read this
        path = self.config.train_py
        if not path.is_file():
            raise LoopError(f"the starting train.py {path} does not exist; pass --train-py or create it")
        return path.read_text(encoding="utf-8")

    def _pending_trials(self, records: Sequence[TrialRecord]) -> list[TrialPlan]:
        """Trial folders without a ledger row: re-run them, or abandon them (see the module docstring)."""
        recorded = {r.trial_id for r in records}
        pending: list[TrialPlan] = []
        if not self.paths.trials.is_dir():
            return pending
        for folder in sorted(self.paths.trials.iterdir()):
            if not folder.is_dir() or not TRIAL_ID.match(folder.name) or folder.name in recorded:
                continue
            tp = TrialPaths(folder)
            if not tp.trial_json.exists():
                self._abandon(tp, "it was never fully prepared (no trial.json)")
                continue
            plan = TrialPlan.model_validate_json(tp.trial_json.read_text(encoding="utf-8"))
            starts = self._starts(tp)
            if starts >= self.config.retries.trial_starts:
                self._abandon(tp, f"it was started {starts} times without finishing")
                continue
            pending.append(plan)
            logger.warning("%s was interrupted before its ledger row; running it again", plan.trial_id)
        return pending

    def _abandon(self, tp: TrialPaths, why: str) -> None:
        target = tp.dir.with_name(f"{tp.dir.name}.abandoned")
        n = 1
        while target.exists():
            n += 1
            target = tp.dir.with_name(f"{tp.dir.name}.abandoned{n}")
        tp.dir.rename(target)
        change = f"{tp.dir.name}: abandoned, {why} (moved to trials/{target.name})"
        logger.warning("%s", change)
        self.changes.append(change)

    @staticmethod
    def _starts(tp: TrialPaths) -> int:
        """Starts of a trial so far; a start that ended in a starvation pause does not count."""
        if not tp.starts.exists():
            return 0
        lines = [line for line in tp.starts.read_text(encoding="utf-8").splitlines() if line.strip()]
        paused = sum(1 for line in lines if '"paused"' in line)
        return len(lines) - 2 * paused

    # ------------------------------------------------------------------ the session's trials

    def _session(self, pending: Sequence[TrialPlan]) -> str:
        for plan in pending:
            self._execute(plan)
        try:
            while True:
                records = self.ledger.records()
                state = replay((r.judged() for r in records), self.config.judge)
                if not state.ready:
                    self._execute(self._plan_baseline(records))
                    continue
                canary_plan = self._plan_canary(records)
                if canary_plan is not None:
                    self._execute(canary_plan)
                    continue
                self._check_continue(records)
                plan = self._plan_candidate(records, state)
                self._execute(plan)
        except _Stop as stop:
            logger.info("stopping: %s", stop)
            return str(stop)

    def _check_continue(self, records: Sequence[TrialRecord], in_flight: int = 0) -> None:
        """Raise _Stop or InvalidStreak; `in_flight`: other workers' candidates not recorded yet."""
        candidates = [r for r in records if r.kind == "candidate"]
        limit = self.config.max_trials
        if limit is not None and len(candidates) + in_flight >= limit:
            running = f" ({in_flight} of them still running)" if in_flight else ""
            raise _Stop(
                f"max_trials reached: {len(candidates) + in_flight} candidate trials of {limit}{running}"
            )
        streak = 0
        for r in reversed(candidates):
            if r.runs:
                break
            streak += 1
        if streak >= self.config.retries.invalid_streak:
            raise InvalidStreak(
                f"the agent's last {streak} proposals did not run (they do not parse or change nothing); "
                f"see the reasons with `python -m harness status {self.paths.root}` and check program.md"
            )
        self._check_cost()

    def _spent(self) -> Usage:
        """What the agent has cost this run, as the ledger records it."""
        return run_cost(self.ledger.rows())

    def _check_cost(self) -> None:
        cap = self.config.max_cost_usd
        if cap is None:
            return
        spent = self._spent().cost_usd
        if spent >= cap:
            raise CapReached(
                f"cap max_cost_usd reached: the agent has cost ${spent:.4f} of ${cap:.4f}. Everything is "
                f"recorded in {self.paths.root}; raise max_cost_usd and run the same command to continue.",
                cap="max_cost_usd",
            )

    def _allocate(self, records: Sequence[TrialRecord]) -> str:
        """The next trial id, claimed with an atomic mkdir (several workers never get the same one)."""
        self.paths.trials.mkdir(parents=True, exist_ok=True)
        used = [
            int(m.group(1)) for m in (TRIAL_FOLDER.match(p.name) for p in self.paths.trials.iterdir()) if m
        ]
        used += [int(m.group(1)) for m in (TRIAL_ID.match(r.trial_id) for r in records) if m]
        n = max(used, default=-1) + 1
        while True:
            trial_id = f"t{n:04d}"
            try:
                (self.paths.trials / trial_id).mkdir()
                return trial_id
            except FileExistsError:
                n += 1

    def _seeds(self, trial_id: str) -> tuple[int, int]:
        return derive_seed(self.config.seed, trial_id, 0), derive_seed(self.config.seed, trial_id, 1)

    def _plan_baseline(self, records: Sequence[TrialRecord], done: int | None = None) -> TrialPlan:
        """`done`: baseline runs recorded or running (other workers'); default: those recorded."""
        root = self.lineage.root()
        text = self.lineage.read(root)
        if done is None:
            done = sum(1 for r in records if r.decision is Decision.BASELINE)
        trial_id = self._allocate(records)
        tp = self.paths.trial(trial_id)
        tp.candidate.write_text(text, encoding="utf-8")
        seeds = self._seeds(trial_id)
        plan = TrialPlan(
            trial_id=trial_id,
            kind="baseline",
            parent_commit=None,
            candidate_commit=root,
            description=f"baseline {done + 1}/{self.config.judge.baseline_repeats} (seed {seeds[0]})",
            seeds=seeds,
            code_lines=code_lines(text),
            created_at=now_iso(),
            worker=self.worker,
        )
        write_atomic(tp.trial_json, plan.model_dump_json(indent=2) + "\n")
        return plan

    def _plan_canary(self, records: Sequence[TrialRecord]) -> TrialPlan | None:
        """The run canary's trial when one is due (harness/canary.py), else None."""
        if not canary.due(records, self.config.canary_interval, self.config.max_trials):
            return None
        trial_id = self._allocate(records)
        number = canary.number_of_next(records)
        return canary.write_plan(
            self.paths.trial(trial_id), trial_id, self._seeds(trial_id), worker=self.worker, number=number
        )

    def _plan_candidate(
        self, records: Sequence[TrialRecord], state: JudgeState, index: int | None = None
    ) -> TrialPlan:
        """`index`: the candidate's number in the run (other workers' running ones counted); default:
        the candidates recorded."""
        assert state.best is not None  # the caller checked state.ready
        parent = state.best.commit
        parent_text = self.lineage.read(parent)
        candidates = sum(1 for r in records if r.kind == "candidate") if index is None else index
        history = self._history(records, state)
        notes = self._current_notes(records)
        program = self._program_in_use(records, state, history, notes)
        ctx = AgentContext(
            program=program,
            notes=notes,
            train_py=parent_text,
            best_val_bpb=state.best.val_bpb,
            history=history,
            last=next((self._last_trial(r) for r in reversed(records) if r.kind != "canary"), None),
            profile=self.config.profile,
            trial_index=candidates,
            seed=derive_seed(self.config.seed, "agent", candidates),
            view_trial=self._lookup,
        )
        self.progress.phase(
            f"#{candidates}", f"asking the {self.agent.name} agent for a proposal{self._cost_note()}"
        )
        proposal, agent_record = self._propose(ctx)
        text = proposal.train_py
        invalid = validate_proposal(text, parent_text)
        description = sanitize_description(proposal.description) or "(no description)"
        trial_id = self._allocate(records)
        notes_sha256 = self._store_notes(trial_id, proposal.notes, notes)
        tp = self.paths.trial(trial_id)
        tp.candidate.write_text(text, encoding="utf-8")
        tp.diff.write_text(
            unified_diff(parent_text, text, parent_label=parent[:12], candidate_label=trial_id),
            encoding="utf-8",
        )
        with self.ledger.locked():  # every lineage write happens under the ledger lock
            commit = self.lineage.commit_candidate(
                text, parent=parent, trial_id=trial_id, description=description
            )
        plan = TrialPlan(
            trial_id=trial_id,
            kind="candidate",
            parent_commit=parent,
            candidate_commit=commit,
            description=description,
            seeds=self._seeds(trial_id),
            code_lines=code_lines(text),
            invalid=invalid,
            agent=agent_record,
            notes_sha256=notes_sha256,
            created_at=now_iso(),
            worker=self.worker,
        )
        write_atomic(tp.trial_json, plan.model_dump_json(indent=2) + "\n")
        return plan

    # ------------------------------------------------------------------ the agent as a researcher

    def _history(self, records: Sequence[TrialRecord], state: JudgeState) -> tuple[HistoryRow, ...]:
        """The whole run, compact (the agent caps what it shows); canaries are the controller's business."""
        base = state.noise.mean if state.noise is not None else None
        return tuple(
            HistoryRow(
                trial_id=r.trial_id,
                status=r.status.value,
                decision=r.decision.value,
                val_bpb=r.val_bpb,
                description=r.description,
                delta=r.val_bpb - base if r.val_bpb is not None and base is not None else None,
            )
            for r in records
            if r.kind != "canary"
        )

    def _current_notes(self, records: Sequence[TrialRecord]) -> str:
        """The newest notes a recorded trial's proposal wrote ("" if none did)."""
        for r in reversed(records):
            if r.notes_sha256 is None:
                continue
            path = self.paths.notes / f"{r.trial_id}.md"
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                logger.warning(
                    "the notes written for %s are missing (%s); the agent starts without", r.trial_id, exc
                )
                return ""
            if hashlib.sha256(text.encode()).hexdigest() != r.notes_sha256:
                logger.warning(
                    "%s does not match the hash in %s's ledger row: it was edited", path, r.trial_id
                )
            return text
        return ""

    def _store_notes(self, trial_id: str, new: str | None, current: str) -> str | None:
        """Write a new version of the notes as notes/<trial_id>.md; its sha256, or None if unchanged."""
        if new is None or new == current:
            return None
        self.paths.notes.mkdir(parents=True, exist_ok=True)
        write_atomic(self.paths.notes / f"{trial_id}.md", new)
        return hashlib.sha256(new.encode()).hexdigest()

    def _lookup(self, trial_id: str) -> TrialLookup | None:
        """`view_trial`: a recorded baseline or candidate trial by id; None for anything else."""
        if not TRIAL_ID.match(trial_id):
            return None
        records = self.ledger.records()
        found = next((r for r in records if r.trial_id == trial_id and r.kind != "canary"), None)
        if found is None:
            return None
        tp = self.paths.trial(trial_id)
        diff = ""
        if found.kind == "candidate" and tp.diff.is_file():
            diff = tp.diff.read_text(encoding="utf-8", errors="replace")
        parent = next(
            (r.trial_id for r in records if r.candidate_commit == found.parent_commit and r.kind != "canary"),
            (found.parent_commit or "")[:12],
        )
        last = self._last_trial(found)
        return TrialLookup(
            trial_id=found.trial_id,
            kind=found.kind,
            status=last.status,
            decision=last.decision,
            val_bpb=found.val_bpb,
            description=found.description,
            reason=found.reason,
            parent=parent,
            diff=diff,
            log_tail=last.log_tail,
        )

    def _cost_note(self) -> str:
        cap = self.config.max_cost_usd
        spent = self._spent()
        if not spent.api_calls and cap is None:
            return ""
        return f" (${spent.cost_usd:.2f} spent so far" + (f" of ${cap:.2f})" if cap is not None else ")")

    def _program_in_use(
        self, records: Sequence[TrialRecord], state: JudgeState, history: tuple[HistoryRow, ...], notes: str
    ) -> str:
        """program.md for the next proposal: the human's, with the evolved guidance when evolution is on
        (after an evolution step, if one is due now)."""
        human = self._program()
        every = self.config.program_evolution_every
        if every <= 0:
            return human  # pinned: the human's program.md as written
        steps = self.ledger.programs()
        current = self._evolved(human, steps)
        candidates = sum(1 for r in records if r.kind == "candidate")
        if not programs.due(candidates, every, steps[-1].after_candidates if steps else None):
            return current
        if not isinstance(self.agent, ProgramEditor):
            if "editor" not in self._warned:
                logger.warning(
                    "program evolution is on but the %s agent cannot edit program.md", self.agent.name
                )
                self._warned.add("editor")
            return current
        guidance = programs.guidance_of(current)
        if guidance is None:
            if "markers" not in self._warned:
                logger.warning(
                    "program evolution is on but %s has no research-guidance section (%s ... %s); skipped",
                    self.config.program,
                    programs.GUIDANCE_START,
                    programs.GUIDANCE_END,
                )
                self._warned.add("markers")
            return current
        ctx = ProgramContext(
            program=current,
            guidance=guidance,
            notes=notes,
            history=history,
            best_val_bpb=state.best.val_bpb if state.best else None,
            baseline_val_bpb=state.noise.mean if state.noise else None,
            candidates=candidates,
            view_trial=self._lookup,
        )
        self.progress.phase(f"#{candidates}", f"asking the agent to revise program.md{self._cost_note()}")
        new = self._evolve(ctx, human, current, steps, candidates)
        self._check_cost()
        return new

    def _evolved(self, human: str, steps: Sequence[ProgramRecord]) -> str:
        """The human's program.md with the last applied step's guidance (the human's alone if none)."""
        applied = [p for p in steps if p.outcome == "applied"]
        if not applied or programs.split(human) is None:
            return human
        path = self.paths.programs / f"{applied[-1].program_id}.md"
        try:
            evolved = path.read_text(encoding="utf-8")
        except OSError as exc:
            logger.warning("%s is missing (%s): using program.md as written", path, exc)
            return human
        guidance = programs.guidance_of(evolved)
        return programs.with_guidance(human, guidance) if guidance is not None else human

    def _evolve(
        self, ctx: ProgramContext, human: str, current: str, steps: Sequence[ProgramRecord], candidates: int
    ) -> str:
        """One program-evolution step: ask, store, commit, record. Returns the program.md to use."""
        assert isinstance(self.agent, ProgramEditor)
        program_id = f"p{len(steps) + 1:04d}"
        started = time.monotonic()
        try:
            proposal = self.agent.propose_program(ctx)
        except AgentCapReached as exc:
            self._record_spend(exc.usage or Usage(), f"program evolution {program_id}: {exc}")
            raise CapReached(
                f"{exc}. Raise the cap and run the same command to continue.", cap=exc.cap
            ) from exc
        except AgentFatal as exc:
            raise AgentGaveUp(f"the {self.agent.name} agent cannot work as configured: {exc}") from exc
        except AgentError as exc:
            logger.warning("program evolution %s failed: %s; program.md stays as it is", program_id, exc)
            record = ProgramRecord(
                program_id=program_id,
                outcome="failed",
                after_candidates=candidates,
                worker=self.worker,
                description=f"failed: {exc}"[:500],
                agent=AgentRecord(name=self.agent.name, usage=exc.usage or Usage()),
                created_at=now_iso(),
            )
            with _signals_held():
                self.ledger.append(record.to_row())
            return current
        new = programs.with_guidance(human, proposal.guidance)
        if programs.rules_of(new) != programs.rules_of(human):  # by construction; checked all the same
            raise LoopError("a program-evolution step would have changed program.md's rules; nothing written")
        applied = [p for p in steps if p.outcome == "applied" and p.commit]
        previous = applied[-1].commit if applied else None
        self.paths.programs.mkdir(parents=True, exist_ok=True)
        md = self.paths.programs / f"{program_id}.md"
        diff_path = self.paths.programs / f"{program_id}.diff"
        write_atomic(md, new)
        label = applied[-1].program_id if applied else "as written"
        write_atomic(diff_path, programs.program_diff(current, new, old_label=label, new_label=program_id))
        with _signals_held(), self.ledger.locked():
            if previous is None:  # the chain's root: the program.md the first step started from
                previous = self.lineage.commit_program(
                    current, parent=None, message="program.md as the human wrote it\n"
                )
            commit = self.lineage.commit_program(
                new,
                parent=previous,
                message=f"{program_id}: {proposal.description}\n\nAfter {candidates} candidate trials.\n",
            )
            record = ProgramRecord(
                program_id=program_id,
                outcome="applied",
                after_candidates=candidates,
                worker=self.worker,
                description=proposal.description,
                commit=commit,
                parent_commit=previous,
                program_sha256=sha256_file(md),
                previous_sha256=hashlib.sha256(current.encode()).hexdigest(),
                diff_sha256=sha256_file(diff_path),
                agent=AgentRecord(
                    name=self.agent.name,
                    model=proposal.usage.model,
                    usage=proposal.usage,
                    propose_s=round(time.monotonic() - started, 3),
                ),
                created_at=now_iso(),
            )
            self.ledger.append(record.to_row())
            self.lineage.set_program(commit, why=f"{program_id} after {candidates} candidates")
        logger.info("program.md revised (%s): %s", program_id, proposal.description)
        return new

    def _record_spend(self, usage: Usage, reason: str) -> None:
        """A ledger row for what a proposal that produced no trial cost (nothing when it cost nothing)."""
        if not usage.api_calls and not usage.cost_usd:
            return
        record = SpendRecord(
            worker=self.worker,
            reason=reason[:1000],
            agent=AgentRecord(name=self.agent.name, model=usage.model, usage=usage),
            created_at=now_iso(),
        )
        with _signals_held():
            self.ledger.append(record.to_row())

    def _program(self) -> str:
        """program.md as it is now: the human may edit it during the night; a vanished file keeps the last text."""
        try:
            self.program = read_program(self.config.program)
        except ProgramMissing:
            logger.warning("%s disappeared; the agent keeps the last version it read", self.config.program)
        return self.program

    def _last_trial(self, record: TrialRecord) -> LastTrial:
        tail = ""
        if record.runs:
            run = record.runs[-1]
            tail = read_tail(self.paths.trial(record.trial_id).dir / run.folder / C.TRAIN_LOG_FILE)
        return LastTrial(
            trial_id=record.trial_id,
            status=record.status.value,
            decision=record.decision.value,
            val_bpb=record.val_bpb,
            reason=record.reason,
            log_tail=tail,
        )

    def _propose(self, ctx: AgentContext) -> tuple[Proposal, AgentRecord]:
        retries = self.config.retries
        failed = Usage()
        for attempt in range(1, retries.agent_attempts + 1):
            started = time.monotonic()
            try:
                proposal = self.agent.propose(ctx)
            except AgentExhausted as exc:
                raise _Stop(f"the agent has nothing left to propose ({exc})") from exc
            except AgentCapReached as exc:
                self._record_spend(
                    add_usage(failed, exc.usage or Usage()), f"proposal #{ctx.trial_index}: {exc}"
                )
                raise CapReached(
                    f"{exc}. Nothing was recorded for this proposal but its cost; raise the cap and run the "
                    "same command to continue.",
                    cap=exc.cap,
                ) from exc
            except AgentFatal as exc:
                self._record_spend(
                    add_usage(failed, exc.usage or Usage()), f"proposal #{ctx.trial_index}: {exc}"
                )
                raise AgentGaveUp(f"the {self.agent.name} agent cannot work as configured: {exc}") from exc
            except AgentError as exc:
                if exc.usage is not None:
                    failed = add_usage(failed, exc.usage)
                if attempt == retries.agent_attempts:
                    self._record_spend(failed, f"proposal #{ctx.trial_index}: gave up: {exc}")
                    raise AgentGaveUp(
                        f"the {self.agent.name} agent failed {attempt} times in a row; last error: {exc}. "
                        "Nothing was recorded for these attempts; run the same command again to resume."
                    ) from exc
                wait = retries.agent_backoff_s * 2 ** (attempt - 1)
                logger.warning("agent error (attempt %d, retrying in %.0fs): %s", attempt, wait, exc)
                self.sleep(wait)
                continue
            record = AgentRecord(
                name=self.agent.name,
                model=proposal.usage.model,
                usage=add_usage(proposal.usage, failed),
                propose_s=round(time.monotonic() - started, 3),
            )
            return proposal, record
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ one trial

    def _execute(self, plan: TrialPlan) -> TrialRecord:
        tp = self.paths.trial(plan.trial_id)
        starts = self._starts(tp)
        if starts or any(entry.name not in tp.own_files for entry in tp.dir.iterdir()):
            self._set_aside(tp, starts)
        with tp.starts.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"at": now_iso(), "worker": self.worker}) + "\n")
        started_at = now_iso()
        with _file_log(tp.controller_log, thread_only=True):
            logger.info("%s (%s): %s", plan.trial_id, plan.kind, plan.description)
            verdicts: list[Verdict] = []
            roles: list[RunRole] = []
            if plan.invalid is None:
                self.progress.phase(plan.trial_id, f"running ({plan.description})")
                verdicts.append(self._run_sandbox(plan, 0))
                roles.append(RunRole())
                if plan.kind == "candidate" and verdicts[0].status is Status.OK:
                    first = self._judge(plan, verdicts)
                    if first.action is Action.CONFIRM:
                        logger.info("%s: %s", plan.trial_id, first.reason)
                        self._confirm(plan, verdicts, roles)
        record = self._record(plan, verdicts, started_at, roles)
        if record.canary is not None and not record.canary.passed:
            raise IsolationBroken(canary.alarm(record, self.ledger.records(), self.paths.root))
        if plan.kind == "baseline" and record.decision is not Decision.BASELINE:
            raise BaselineFailed(
                f"the starting train.py failed its baseline run {plan.trial_id}: {record.status.value}: "
                f"{record.reason}. See `python -m harness logs {plan.trial_id} --run-dir {self.paths.root}`; "
                "fix train.py (or the data and images) and start a new run folder."
            )
        return record

    def _set_aside(self, tp: TrialPaths, starts: int) -> None:
        """Move an interrupted attempt's sandbox output out of the way (kept, never deleted)."""
        aside = tp.interrupted_dir / str(starts)
        while aside.exists():  # a start paused by starvation does not count, so numbers can repeat
            starts += 1
            aside = tp.interrupted_dir / str(starts)
        aside.mkdir(parents=True)
        for entry in tp.dir.iterdir():
            if entry.name not in tp.own_files:
                shutil.move(str(entry), str(aside / entry.name))

    def _confirm(self, plan: TrialPlan, verdicts: list[Verdict], roles: list[RunRole]) -> None:
        """The paired confirmation (harness/judge.py): `confirm_pairs` times, the candidate and the
        current best back to back with the same seed, in alternating order; stops at a failed run."""
        tp = self.paths.trial(plan.trial_id)
        state = replay((r.judged() for r in self.ledger.records()), self.config.judge)
        assert state.best is not None
        best = state.best
        tp.paired_best.write_text(self.lineage.read(best.commit), encoding="utf-8")
        for pair in range(1, self.config.judge.confirm_pairs + 1):
            seed = plan.seeds[1] if pair == 1 else derive_seed(self.config.seed, plan.trial_id, pair)
            order: tuple[Literal["candidate", "best"], ...] = (
                ("candidate", "best") if pair % 2 else ("best", "candidate")
            )
            for role in order:
                run = len(verdicts)
                label = f"the best {best.commit[:7]}" if role == "best" else "the candidate"
                self.progress.phase(
                    plan.trial_id,
                    f"confirming: pair {pair}/{self.config.judge.confirm_pairs}, {label} (seed {seed})",
                )
                verdict = self._run_sandbox(
                    plan,
                    run,
                    seed=seed,
                    candidate=tp.paired_best if role == "best" else tp.candidate,
                    sandbox_id=f"{plan.trial_id}-{'b' if role == 'best' else 'c'}{pair}",
                )
                verdicts.append(verdict)
                roles.append(RunRole(role, best.commit if role == "best" else None, pair))
                if verdict.status is not Status.OK:
                    return  # not confirmed, whichever run failed

    def _run_sandbox(
        self,
        plan: TrialPlan,
        run: int,
        *,
        seed: int | None = None,
        candidate: Path | None = None,
        sandbox_id: str | None = None,
    ) -> Verdict:
        tp = self.paths.trial(plan.trial_id)
        spec = TrialSpec(
            trial_id=sandbox_id or (plan.trial_id if run == 0 else plan.trial_id + CONFIRM_SUFFIX),
            candidate=candidate or tp.candidate,
            trial_dir=tp.run_dir(run),
            profile=self.config.profile,
            limits=self.seat.limits,
            seed=plan.seeds[min(run, 1)] if seed is None else seed,
            gpu_ids=self.seat.gpu_ids,
            min_compute_share=self.config.judge.min_compute_share,
        )
        return self._run_fed(tp, spec)

    def _run_fed(self, tp: TrialPaths, spec: TrialSpec) -> Verdict:
        """Run `spec` until a run is not starved: each starved run is set aside under starved/<n>/,
        followed by a wait (doubling), and `starved_attempts` of them in a row pause the run."""
        retries = self.config.retries
        for attempt in range(1, retries.starved_attempts + 1):
            verdict = self._run_spec(spec)
            if verdict.status is not Status.STARVED:
                return verdict
            folder = self._set_aside_starved(tp, spec.trial_dir)
            if attempt == retries.starved_attempts:
                with tp.starts.open("a", encoding="utf-8") as f:  # this start does not count (resumable)
                    f.write(json.dumps({"at": now_iso(), "worker": self.worker, "paused": "starved"}) + "\n")
                raise HostStarved(
                    f"the host starved {attempt} runs of {spec.trial_id} in a row (last: {verdict.reason}; "
                    f"kept in {folder}). Nothing was judged; the run is paused. Stop what loads the host "
                    f"(or lower judge.min_compute_share, now {spec.min_compute_share}) and run the same "
                    "command again: the trial is re-run."
                )
            wait = min(retries.starved_backoff_s * 2 ** (attempt - 1), STARVED_BACKOFF_MAX_S)
            share = "?" if verdict.compute_share is None else f"{verdict.compute_share:.2f}"
            logger.warning(
                "%s starved (compute share %s < %.2f; attempt %d of %d): waiting %.0f s, then running it again",
                spec.trial_id,
                share,
                spec.min_compute_share,
                attempt,
                retries.starved_attempts,
                wait,
            )
            self.progress.phase(
                tp.dir.name,
                f"host busy: compute share {share} < {spec.min_compute_share:.2f}; "
                f"re-running in {wait:.0f} s (starved {attempt}/{retries.starved_attempts})",
            )
            self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _set_aside_starved(tp: TrialPaths, run_dir: Path) -> str:
        """Move a starved run's files to starved/<n>/ (kept, never judged); return that folder."""
        tp.starved_dir.mkdir(exist_ok=True)
        n = 1 + sum(1 for p in tp.starved_dir.iterdir() if p.is_dir())
        target = tp.starved_dir / str(n)
        target.mkdir()
        if run_dir == tp.dir:  # the first run writes into the trial folder itself, beside other runs
            for entry in tp.dir.iterdir():
                others = entry.name == tp.confirm_dir.name or RUN_FOLDER.match(entry.name)
                if entry.name not in tp.own_files and not others:
                    shutil.move(str(entry), str(target / entry.name))
        else:
            for entry in run_dir.iterdir():
                shutil.move(str(entry), str(target / entry.name))
            run_dir.rmdir()
        return target.relative_to(tp.dir).as_posix()

    def _run_spec(self, spec: TrialSpec) -> Verdict:
        retries = self.config.retries
        for attempt in range(1, retries.sandbox_attempts + 1):
            try:
                verdict = self.sandbox.run_trial(spec)
            except (DataMissing, ImageMissing) as exc:
                raise SandboxGaveUp(f"{exc} (nothing was recorded against the candidate)") from exc
            except SandboxError as exc:
                if attempt == retries.sandbox_attempts:
                    raise SandboxGaveUp(
                        f"the {self.sandbox.name} sandbox failed {attempt} times running {spec.trial_id}: {exc}. "
                        "Nothing was recorded against the candidate; fix the sandbox and run the same "
                        "command again: the trial is re-run."
                    ) from exc
                wait = retries.sandbox_backoff_s * 2 ** (attempt - 1)
                logger.warning(
                    "sandbox error on %s (attempt %d, retrying in %.0fs): %s",
                    spec.trial_id,
                    attempt,
                    wait,
                    exc,
                )
                self.sleep(wait)
                continue
            if not (spec.trial_dir / C.VERDICT_FILE).exists():
                write_atomic(spec.trial_dir / C.VERDICT_FILE, verdict.model_dump_json(indent=2) + "\n")
            return verdict
        raise AssertionError("unreachable")  # pragma: no cover

    def _judge(self, plan: TrialPlan, verdicts: Sequence[Verdict]) -> Judgement:
        records = self.ledger.records()
        state = replay((r.judged() for r in records), self.config.judge)
        assert state.best is not None and state.noise is not None
        scores = [v.val_bpb for v in verdicts if v.val_bpb is not None]
        return judge(state.best, state.noise, scores, plan.code_lines, self.config.judge)

    def _decide(
        self,
        plan: TrialPlan,
        verdicts: Sequence[Verdict],
        state: JudgeState,
        roles: Sequence[RunRole] = (),
        records: Sequence[TrialRecord] = (),
    ) -> tuple[Status, Decision, str, float | None, dict[str, Any] | None]:
        """(status, decision, reason, val_bpb, judgement) for a finished trial."""
        if plan.invalid is not None:
            return Status.CRASH, Decision.CRASH, plan.invalid, None, None
        if any(v.status is Status.STARVED for v in verdicts):  # _run_fed never returns one
            raise LoopError(f"{plan.trial_id}: a starved run reached the judge; nothing was recorded")
        first = verdicts[0]
        if plan.kind == "canary":
            return canary.decide(first)
        if first.status is not Status.OK:
            return first.status, Decision.CRASH, first.reason, None, None
        if plan.kind == "baseline":
            return Status.OK, Decision.BASELINE, "baseline run", first.val_bpb, None
        assert state.best is not None and state.noise is not None
        roles = list(roles) or [RunRole() for _ in verdicts]
        mine = [v for v, r in zip(verdicts, roles, strict=True) if r.role == "candidate"]
        scores = [v.val_bpb for v in mine if v.status is Status.OK and v.val_bpb is not None]
        failed = next(
            ((v, r) for v, r in zip(verdicts, roles, strict=True) if v.status is not Status.OK), None
        )
        if failed is not None:  # a confirmation run did not score: the keep is not confirmed
            v, r = failed
            if r.role == "best":
                reason = f"not confirmed: the best's paired re-run ended {v.status.value}: {v.reason}"
                return Status.OK, Decision.DISCARD, reason, sum(scores) / len(scores), None
            reason = f"not confirmed: the confirmation run ended {v.status.value}: {v.reason}"
            return v.status, Decision.DISCARD, reason, sum(scores) / len(scores), None
        if len(verdicts) > 1:
            paired_best = next((r.commit for r in roles if r.role == "best"), None) or "?"
            via = keeps_between(records, paired_best, state.best.commit)
            if via is None:  # the best moved on by a keep with no paired judgement to chain through
                reason = (
                    f"not confirmed in time: it was paired with {paired_best[:7]}, but the best became "
                    f"{state.best.commit[:7]} ({state.best.trial_id}) while it ran"
                )
                return Status.OK, Decision.DISCARD, reason, sum(scores) / len(scores), None
            by_pair: dict[int, dict[str, float]] = {}
            for v, r in zip(verdicts, roles, strict=True):
                if r.pair and v.val_bpb is not None:
                    by_pair.setdefault(r.pair, {})[r.role] = v.val_bpb
            pairs = [(p["candidate"], p["best"]) for _, p in sorted(by_pair.items())]
            pj = judge_paired(
                state.best,
                state.noise,
                scores[0],
                pairs,
                plan.code_lines,
                self.config.judge,
                paired_with=paired_best,
                via=via,
            )
            return Status.OK, pj.decision, pj.reason, pj.score, pj.model_dump(mode="json")
        j = judge(state.best, state.noise, scores, plan.code_lines, self.config.judge)
        if j.action is Action.CONFIRM:  # best moved under us (another worker): judged as unconfirmed
            return (
                Status.OK,
                Decision.DISCARD,
                f"not confirmed in time: {j.reason}",
                j.score,
                j.model_dump(mode="json"),
            )
        return Status.OK, j.decision, j.reason, j.score, j.model_dump(mode="json")

    def _record(
        self,
        plan: TrialPlan,
        verdicts: Sequence[Verdict],
        started_at: str,
        roles: Sequence[RunRole] = (),
    ) -> TrialRecord:
        tp = self.paths.trial(plan.trial_id)
        roles = list(roles) or [RunRole() for _ in verdicts]
        runs = [self._run_record(tp, i, v, r) for i, (v, r) in enumerate(zip(verdicts, roles, strict=True))]
        memory = [v.peak_memory_gb for v in verdicts if v.peak_memory_gb is not None]
        first = verdicts[0] if verdicts else None
        facts = TrialFacts(
            trial_id=plan.trial_id,
            kind=plan.kind,
            parent_commit=plan.parent_commit,
            candidate_commit=plan.candidate_commit,
            seeds=[r.seed for r in runs],
            runs=runs,
            images=first.images if first else {},
            limits=self.seat.limits.model_dump(mode="json"),
            gpu_ids=list(self.seat.gpu_ids),
            agent=plan.agent,
        )
        manifest = manifest_for(facts, hash_tree(tp.dir, skip=frozenset({tp.manifest.name})))
        write_atomic(tp.manifest, manifest_text(manifest))
        hashes = {**manifest["hashes"], tp.manifest.name: sha256_file(tp.manifest)}
        with _signals_held(), self.ledger.locked():
            records = self.ledger.records()
            state = replay((r.judged() for r in records), self.config.judge)
            status, decision, reason, val, judgement = self._decide(plan, verdicts, state, roles, records)
            record = TrialRecord(
                **dict(facts),
                worker=self.worker,
                status=status,
                decision=decision,
                reason=reason,
                description=plan.description,
                val_bpb=val,
                claimed_val_bpb=first.claimed_val_bpb if first else None,
                memory_gb=max(memory) if memory else None,
                code_lines=plan.code_lines,
                judge=judgement,
                hashes=hashes,
                timings=self._timings(plan, verdicts),
                started_at=started_at,
                finished_at=now_iso(),
                canary=canary.check(first, tp.dir, tp.candidate) if plan.kind == "canary" and first else None,
                notes_sha256=plan.notes_sha256,
                starved=self._starved_attempts(tp),
            )
            written = TrialRecord.model_validate(self.ledger.append(record.to_row()))
            self.results.append(rows_for([written]))  # none for a canary: results.tsv lists experiments
            if plan.kind == "candidate":
                assert plan.candidate_commit is not None  # TrialPlan: every trial but a canary has one
                if decision is Decision.KEEP:
                    assert state.best is not None
                    self.lineage.keep(plan.trial_id, plan.candidate_commit, expected_head=state.best.commit)
                else:
                    self.lineage.discard(plan.trial_id, plan.candidate_commit)
            self.recorded += 1
        new_state = replay((r.judged() for r in [*records, written]), self.config.judge)
        self.progress.recorded(written, new_state)
        return written

    @staticmethod
    def _starved_attempts(tp: TrialPaths) -> list[StarvedAttempt]:
        """The trial's starved runs, from their verdicts under starved/ (this start's and earlier ones')."""
        attempts: list[StarvedAttempt] = []
        if not tp.starved_dir.is_dir():
            return attempts
        folders = [p for p in tp.starved_dir.iterdir() if p.is_dir() and p.name.isdigit()]
        for folder in sorted(folders, key=lambda p: int(p.name)):
            path = folder / C.VERDICT_FILE
            if not path.is_file():
                continue
            v = Verdict.model_validate_json(path.read_text(encoding="utf-8"))
            attempts.append(
                StarvedAttempt(
                    folder=folder.relative_to(tp.dir).as_posix(),
                    sandbox_trial_id=v.trial_id,
                    compute_share=v.compute_share,
                    compute=v.compute,
                    reason=v.reason,
                )
            )
        return attempts

    def _run_record(self, tp: TrialPaths, run: int, v: Verdict, role: RunRole | None = None) -> RunRecord:
        role = role or RunRole()
        return RunRecord(
            run=run,
            sandbox_trial_id=v.trial_id,
            folder=tp.run_dir(run).relative_to(tp.dir).as_posix(),
            seed=v.seed,
            status=v.status,
            val_bpb=v.val_bpb,
            claimed_val_bpb=v.claimed_val_bpb,
            reason=v.reason,
            timings={k: float(x) for k, x in v.timings.items() if isinstance(x, int | float) and x == x},
            peak_memory_gb=v.peak_memory_gb,
            images=v.images,
            limits=v.limits,
            gpu_ids=v.gpu_ids,
            backend=v.backend,
            artifact_sha256=v.report.artifact_sha256 if v.report else None,
            compute_share=v.compute_share,
            compute=v.compute,
            role=role.role,
            commit=role.commit,
            pair=role.pair,
            node=v.node,
        )

    @staticmethod
    def _timings(plan: TrialPlan, verdicts: Sequence[Verdict]) -> dict[str, float]:
        timings: dict[str, float] = {}
        if plan.agent is not None:
            timings["propose_s"] = plan.agent.propose_s
        for i, v in enumerate(verdicts):
            total = v.timings.get("total_s")
            if isinstance(total, int | float):
                timings[f"run{i}_total_s"] = float(total)
        return timings

    # ------------------------------------------------------------------ summary

    def _summary(self, stopped: str) -> RunSummary:
        records = self.ledger.records()
        state = replay((r.judged() for r in records), self.config.judge)
        check = self.ledger.verify()
        return RunSummary(
            stopped=stopped,
            recorded=self.recorded,
            total_rows=len(records),
            candidates=sum(1 for r in records if r.kind == "candidate"),
            keeps=sum(1 for r in records if r.decision is Decision.KEEP),
            best_val_bpb=state.best.val_bpb if state.best else None,
            baseline_val_bpb=state.noise.mean if state.noise else None,
            threshold=state.noise.threshold if state.noise else None,
            last_hash=check.last_hash,
            changes=list(self.changes),
        )
