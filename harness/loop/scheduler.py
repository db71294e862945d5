"""The run order, decided in one place: what a worker runs next, or why it stops.

`next_step(board, config)` is a pure function of the ledger's trial records, the trials claimed by
workers (recorded or not yet), the interrupted trials left to re-run and what the agent has cost.
The order: interrupted trials first, then baseline runs (a worker waits while the last ones run:
nothing can be judged before the baseline closes), then the run canary when due (one at a time;
while one is in flight the others go on with candidates, unless the last canary failed), then
candidates until `max_trials`, the invalid-proposal streak or the cost cap says stop.

`Scheduler` keeps the claims and takes the decision under ONE lock. Deliberate: a trial is counted
once, by its id, whether it is recorded, running, or both (recorded, its worker not yet returned);
a claim whose plan has no id yet counts once on its own. So N workers never overshoot max_trials
and never stop short of it, and each candidate in flight gets its own `trial_index`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness import canary
from harness.config import RunConfig
from harness.judge import replay
from harness.loop.errors import CapReached, InvalidStreak
from harness.records.schemas import TrialPlan, TrialRecord
from sandbox.constants import Decision

CLAIM_WAIT_S = 1.0  # how often a waiting worker looks at the ledger again (it is also woken on changes)


@dataclass(frozen=True)
class Claim:
    """A trial a worker has taken on: its kind, and its id once its plan has one."""

    kind: str  # TrialPlan.kind: "baseline" | "canary" | "candidate"
    trial_id: str | None = None


@dataclass(frozen=True)
class Rerun:
    plan: TrialPlan  # a trial folder an earlier session left without a ledger row


@dataclass(frozen=True)
class Baseline:
    number: int  # this baseline run's number, 1..baseline_repeats


@dataclass(frozen=True)
class Canary:
    number: int


@dataclass(frozen=True)
class Candidate:
    index: int  # the candidate's number in the run (0-based), those in flight counted


@dataclass(frozen=True)
class Wait:
    why: str


@dataclass(frozen=True)
class Stop:
    reason: str


Step = Rerun | Baseline | Canary | Candidate | Wait | Stop


@dataclass(frozen=True)
class Board:
    """Everything the next step is decided from."""

    records: Sequence[TrialRecord]
    claims: Sequence[Claim] = ()
    pending: Sequence[TrialPlan] = ()
    spent_usd: float = 0.0

    def count(self, kind: str, recorded: Callable[[TrialRecord], bool] | None = None) -> int:
        """Trials of `kind` recorded (those `recorded` accepts) or claimed, each counted once."""
        ids = {r.trial_id for r in self.records if r.kind == kind and (recorded is None or recorded(r))}
        ids |= {c.trial_id for c in self.claims if c.kind == kind and c.trial_id is not None}
        return len(ids) + sum(1 for c in self.claims if c.kind == kind and c.trial_id is None)

    def in_flight(self, kind: str) -> int:
        """Claimed trials of `kind` that have no ledger row yet."""
        recorded = {r.trial_id for r in self.records}
        return sum(1 for c in self.claims if c.kind == kind and c.trial_id not in recorded)

    def claimed(self, kind: str) -> bool:
        return any(c.kind == kind for c in self.claims)


def next_step(board: Board, config: RunConfig) -> Step:
    """The next trial to run, a wait, or a stop. Raises InvalidStreak or CapReached."""
    if board.pending:
        return Rerun(board.pending[0])
    records = board.records
    state = replay((r.judged() for r in records), config.judge)
    if not state.ready:
        done = board.count("baseline", lambda r: r.decision is Decision.BASELINE)
        if done < config.judge.baseline_repeats:
            return Baseline(done + 1)
        return Wait("the last baseline runs are running")
    if not board.claimed("canary"):
        if canary.due(records, config.canary_interval, config.max_trials):
            return Canary(canary.number_of_next(records))
    elif last_canary_failed(records):
        return Wait("a canary failed: nothing goes on until one is rejected again")
    candidates = board.count("candidate")
    limit = config.max_trials
    if limit is not None and candidates >= limit:
        running = board.in_flight("candidate")
        note = f" ({running} of them still running)" if running else ""
        return Stop(f"max_trials reached: {candidates} candidate trials of {limit}{note}")
    check_streak(records, config)
    check_cost(board.spent_usd, config)
    return Candidate(candidates)


def last_canary_failed(records: Sequence[TrialRecord]) -> bool:
    last = next((r for r in reversed(records) if r.kind == "canary"), None)
    return last is not None and last.canary is not None and not last.canary.passed


def check_streak(records: Sequence[TrialRecord], config: RunConfig) -> None:
    streak = 0
    for r in reversed([r for r in records if r.kind == "candidate"]):
        if r.runs:
            break
        streak += 1
    if streak >= config.retries.invalid_streak:
        raise InvalidStreak(
            f"the agent's last {streak} proposals did not run (they do not parse or change nothing); "
            f"see the reasons with `python -m harness status {config.run_dir}` and check program.md"
        )


def check_cost(spent: float, config: RunConfig) -> None:
    cap = config.max_cost_usd
    if cap is not None and spent >= cap:
        raise CapReached(
            f"cap max_cost_usd reached: the agent has cost ${spent:.4f} of ${cap:.4f}. Everything is "
            f"recorded in {config.run_dir}; raise max_cost_usd and run the same command to continue.",
            cap="max_cost_usd",
        )


class Halted(Exception):
    """The pool is stopping (a worker failed, or the run was cancelled): claim nothing more."""


class Scheduler:
    """The claims of one session's workers; `claim` decides and reserves under one lock."""

    def __init__(self, config: RunConfig, pending: Sequence[TrialPlan] = ()) -> None:
        self.config = config
        self._cv = threading.Condition()
        self._pending = list(pending)
        self._claims: dict[int, Claim] = {}
        self._tokens = itertools.count()
        self.halted: str | None = None

    def claim(
        self, records: Callable[[], Sequence[TrialRecord]], spent_usd: Callable[[], float]
    ) -> tuple[int, Step]:
        """Reserve the next trial: (claim token, step); never returns Wait (it waits), raises Halted.

        `records` is read under the lock, so the ledger and the claims are one consistent view."""
        with self._cv:
            while True:
                if self.halted is not None:
                    raise Halted(self.halted)
                spent = spent_usd() if self.config.max_cost_usd is not None else 0.0
                board = Board(records(), tuple(self._claims.values()), tuple(self._pending), spent)
                step = next_step(board, self.config)
                if isinstance(step, Wait):
                    if not self._claims:  # nothing in flight could end the wait
                        raise AssertionError(f"the scheduler waits with no trial in flight: {step.why}")
                    self._cv.wait(CLAIM_WAIT_S)
                    continue
                if isinstance(step, Stop):
                    return -1, step
                token = next(self._tokens)
                if isinstance(step, Rerun):
                    self._pending.pop(0)
                    self._claims[token] = Claim(step.plan.kind, step.plan.trial_id)
                else:
                    kind = {Baseline: "baseline", Canary: "canary", Candidate: "candidate"}[type(step)]
                    self._claims[token] = Claim(kind)
                return token, step

    def bind(self, token: int, trial_id: str) -> None:
        """The claim's plan has its trial id: from now on the trial is counted by it."""
        with self._cv:
            self._claims[token] = Claim(self._claims[token].kind, trial_id)

    def release(self, token: int) -> None:
        """The claim's worker is done with it (recorded, failed, or cancelled)."""
        with self._cv:
            self._claims.pop(token, None)
            self._cv.notify_all()

    def halt(self, why: str) -> None:
        with self._cv:
            if self.halted is None:
                self.halted = why
            self._cv.notify_all()
