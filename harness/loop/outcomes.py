"""The small values the loop passes around: who runs a trial (`Seat`), whose code a run ran
(`RunRole`), what a finished trial's row says (`Outcome`), and what a session did (`RunSummary`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from harness.agents.base import Agent
from sandbox.constants import Decision, Status
from sandbox.engine.limits import Limits


@dataclass(frozen=True)
class Seat:
    """Who runs a trial: the worker's name, its agent, and the limits and GPU ids its lease gives it."""

    name: str
    agent: Agent
    limits: Limits
    gpu_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunRole:
    """Whose train.py a run of a trial ran: the candidate's, or (paired confirmation) the best's."""

    role: Literal["candidate", "best"] = "candidate"
    commit: str | None = None  # the best's commit; None: the trial's candidate
    pair: int = 0  # 0: the first run; k: the k-th confirmation pair


@dataclass(frozen=True)
class Outcome:
    """What a finished trial's ledger row says: its status, decision, reason, score and judgement."""

    status: Status
    decision: Decision
    reason: str
    val_bpb: float | None = None
    judgement: dict[str, Any] | None = None


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
