"""The records of a run folder: the ledger's row schemas and the plan and run files beside them.

`TrialRecord` is a trial's ledger row (everything needed to audit one trial without its folder);
`ProgramRecord` and `SpendRecord` are the rows that are not trials (`NON_TRIAL_KINDS`); `TrialPlan` is a
trial folder's trial.json (written before the trial runs) and `RunMeta` a run folder's run.json.
Rows are read with `extra="ignore"`, so an older or newer field never stops a resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.agents.base import Usage
from harness.judge import JudgedRow, JudgeSettings
from harness.records.results import ResultRow
from sandbox.constants import Decision, Status
from sandbox.verdict import NodeInfo

# Set by the ledger on append (harness/records/chain.py); present on every row read back.
CHAIN_KEYS = ("index", "prev_hash", "hash")

# --------------------------------------------------------------------------- the trial row schema


class RunRecord(BaseModel):
    """One container run of a candidate (the first run, or its confirmation)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run: int  # 0: the first run, then the paired confirmation's runs in the order they ran
    sandbox_trial_id: str  # the id the sandbox saw (labels, logs)
    folder: str  # relative to the trial folder
    seed: int
    status: Status
    val_bpb: float | None = None
    claimed_val_bpb: float | None = None
    reason: str = ""
    timings: dict[str, float] = Field(default_factory=dict)
    peak_memory_gb: float | None = None
    images: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    gpu_ids: list[str] = Field(default_factory=list)
    backend: str = ""
    artifact_sha256: str | None = None
    compute_share: float | None = None  # what TRAIN got of its CPUs (sandbox/compute.py)
    compute: dict[str, Any] | None = None  # the evidence
    # Paired confirmation (harness/judge.py): whose train.py ran ("candidate", or "best": the best at
    # the time, re-run beside it), that commit when it is not the trial's candidate, and the pair (0: none).
    role: Literal["candidate", "best"] = "candidate"
    commit: str | None = None
    pair: int = 0

    node: NodeInfo | None = None  # the cluster node it ran on (written only when set: older rows lack it)


class StarvedAttempt(BaseModel):
    """A run the host starved of compute: kept in the trial folder, never judged (harness/loop.py)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    folder: str  # relative to the trial folder: starved/<n>
    sandbox_trial_id: str
    compute_share: float | None = None
    compute: dict[str, Any] | None = None
    reason: str = ""


class AgentRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    model: str = ""
    usage: Usage = Field(default_factory=Usage)
    propose_s: float = 0.0


# "canary": a control trial (harness/canary.py), a known cheat that must be rejected. Its row has
# decision `canary` and a `canary` field; it is never judged, never best, never counted as a candidate
# and never written to results.tsv.
TrialKind = Literal["baseline", "candidate", "canary"]


class CanaryCheck(BaseModel):
    """What a canary row adds: whether the known cheat came back as it must (rejected by the probe)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    passed: bool
    expected: str  # e.g. "rejected by probe:causality"
    got: str  # what came back, e.g. "rejected by probe:causality", "ok (val_bpb 0.012345)"
    escapes: list[str] = Field(default_factory=list)  # breakouts the canary reported succeeding
    source_sha256: str  # of the canary train.py that ran


# Rows and plans written before the canary's source hash had a field of its own held it in
# `candidate_commit` as `sha256:<hex>`; they are read as if written today (the chain hashes the bytes
# on disk, so reading them differently changes nothing that `verify` checks).
_LEGACY_CANARY_COMMIT = "sha256:"


def _legacy_canary(data: Any, source_field: str | None) -> Any:
    if not (isinstance(data, Mapping) and data.get("kind") == "canary"):
        return data
    commit = data.get("candidate_commit")
    if not (isinstance(commit, str) and commit.startswith(_LEGACY_CANARY_COMMIT)):
        return data
    moved = {**data, "candidate_commit": None}
    if source_field is not None and moved.get(source_field) is None:
        moved[source_field] = commit.removeprefix(_LEGACY_CANARY_COMMIT)
    return moved


def _check_commit(kind: str, commit: str | None) -> None:
    if (commit is None) != (kind == "canary"):
        raise ValueError(
            "candidate_commit names the git commit of every trial but a canary (whose source is no commit; "
            f"its SHA-256 has a field of its own), got {commit!r} for a {kind} trial"
        )


class TrialFacts(BaseModel):
    """What a trial's runs decide, before it is judged: the part of its row its manifest.json holds."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trial_id: str
    kind: TrialKind
    parent_commit: str | None
    candidate_commit: str | None  # None on a canary row: see `canary.source_sha256`
    seeds: list[int] = Field(default_factory=list)
    runs: list[RunRecord] = Field(default_factory=list)  # empty: never ran (does not parse, no change)
    images: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    gpu_ids: list[str] = Field(default_factory=list)
    agent: AgentRecord | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_canary(cls, data: Any) -> Any:
        return _legacy_canary(data, None)  # the row's `canary.source_sha256` already holds the hash

    @model_validator(mode="after")
    def _commit_unless_canary(self) -> Self:
        _check_commit(self.kind, self.candidate_commit)
        return self


class TrialRecord(TrialFacts):
    """One ledger row: everything needed to audit one trial without its folder."""

    schema_version: int = 1
    worker: str
    status: Status  # of the run that decided (the first run that was not ok, else the first run)
    decision: Decision
    reason: str
    description: str
    val_bpb: float | None  # verified score: the mean of the ok runs judged (None: no score)
    claimed_val_bpb: float | None = None  # what the candidate printed, if anything (audit only)
    memory_gb: float | None = None  # the largest peak of its runs
    code_lines: int
    judge: dict[str, Any] | None = None  # the Judgement, with the bar and threshold used
    hashes: dict[str, str] = Field(default_factory=dict)  # path in the trial folder -> sha256
    timings: dict[str, float] = Field(default_factory=dict)
    started_at: str
    finished_at: str
    canary: CanaryCheck | None = None  # set on canary rows only
    notes_sha256: str | None = None  # the agent's notes written for this trial (notes/<trial_id>.md)
    # Runs of this trial the host starved, re-run before it was judged (only on rows that had any).
    starved: list[StarvedAttempt] = Field(default_factory=list)
    # Set by the ledger on append; present on every row read back.
    index: int | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def to_row(self) -> dict[str, Any]:
        """The row to append (the chain keys are the ledger's to set; `canary` only on canary rows,
        `notes_sha256` only on rows whose proposal rewrote the notes, `starved` only on rows that had
        starved runs, a run's `node` only for runs on a cluster node)."""
        exclude: dict[str, Any] = {k: True for k in CHAIN_KEYS}
        if self.canary is None:
            exclude["canary"] = True
        if self.notes_sha256 is None:
            exclude["notes_sha256"] = True
        if not self.starved:
            exclude["starved"] = True
        local = {i: {"node"} for i, r in enumerate(self.runs) if r.node is None}
        if local:  # a run on this host: its row is exactly what it was before clusters existed
            exclude["runs"] = local
        return self.model_dump(mode="json", exclude=exclude)

    @property
    def nodes(self) -> list[NodeInfo]:
        """The cluster nodes its runs ran on (empty for a run on the controller's host)."""
        return [r.node for r in self.runs if r.node is not None]

    def result_row(self) -> ResultRow:
        return ResultRow(
            commit=self.candidate_commit or "",  # rows_for never asks a canary (no commit)
            val_bpb=self.val_bpb,
            memory_gb=self.memory_gb,
            status=self.decision.value,
            description=self.description,
        )

    def judged(self) -> JudgedRow:
        commit = self.candidate_commit or ""  # a canary has none, and `replay` skips its row
        return JudgedRow(
            trial_id=self.trial_id,
            kind=self.kind,
            decision=self.decision,
            val_bpb=self.val_bpb,
            candidate_commit=commit,
            code_lines=self.code_lines,
            measurements=tuple(
                (run.commit or commit, run.val_bpb)
                for run in self.runs
                if run.status is Status.OK and run.val_bpb is not None
            ),
        )


# --------------------------------------------------------------------------- rows that are not trials

# `program`: a program-evolution step (harness/program.py). `spend`: what a proposal that was abandoned
# cost (a cap reached, or the agent gave up), so the run's cost in the ledger is all it spent. Neither
# is a trial: `Ledger.records()` leaves them out, so nothing that judges or counts trials sees them.
NON_TRIAL_KINDS = frozenset({"program", "spend"})


class ProgramRecord(BaseModel):
    """One program-evolution step: the new program.md (or why there is none: outcome `failed`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["program"] = "program"
    program_id: str  # p0001, p0002, ...: programs/<program_id>.md and .diff
    outcome: Literal["applied", "failed"]
    after_candidates: int  # candidate trials recorded when it was made
    worker: str
    description: str
    commit: str | None = None  # the lineage commit of the new program.md (refs/autoresearch/program)
    parent_commit: str | None = None  # the program commit it was derived from
    program_sha256: str | None = None  # of programs/<program_id>.md
    previous_sha256: str | None = None  # of the program.md it replaced
    diff_sha256: str | None = None  # of programs/<program_id>.diff
    agent: AgentRecord | None = None
    created_at: str
    index: int | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(CHAIN_KEYS))


class SpendRecord(BaseModel):
    """The cost of a proposal that produced no trial (a cap reached, or the agent gave up)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: Literal["spend"] = "spend"
    worker: str
    reason: str
    agent: AgentRecord
    created_at: str
    index: int | None = None
    prev_hash: str | None = None
    hash: str | None = None

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(CHAIN_KEYS))


def run_cost(rows: Iterable[Mapping[str, Any]]) -> Usage:
    """The agent usage of every row of a ledger (trials, program steps, abandoned proposals), summed."""
    total = Usage()
    for row in rows:
        agent = row.get("agent")
        if not isinstance(agent, Mapping) or not isinstance(agent.get("usage"), Mapping):
            continue
        u = Usage.model_validate(agent["usage"])
        total = Usage(
            model=total.model or u.model,
            input_tokens=total.input_tokens + u.input_tokens,
            output_tokens=total.output_tokens + u.output_tokens,
            cache_read_input_tokens=total.cache_read_input_tokens + u.cache_read_input_tokens,
            cache_creation_input_tokens=total.cache_creation_input_tokens + u.cache_creation_input_tokens,
            cost_usd=total.cost_usd + u.cost_usd,
            api_calls=total.api_calls + u.api_calls,
        )
    return total


# --------------------------------------------------------------------------- the run folder's other records


class RunMeta(BaseModel):
    """run.json: what a run folder was started with; a resumed run must agree on the profile."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_tag: str
    profile: str
    agent: str
    backend: str
    created_at: str
    root_commit: str
    start_sha256: str
    judge: JudgeSettings = Field(default_factory=JudgeSettings)  # as at the first start (for reports)


class TrialPlan(BaseModel):
    """trial.json: a prepared trial, written before anything runs, so an interrupted one can re-run."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    trial_id: str
    kind: TrialKind
    parent_commit: str | None
    candidate_commit: str | None  # None on a canary plan: see `source_sha256`
    source_sha256: str | None = None  # a canary's train.py (set on canary plans only)
    description: str
    seeds: tuple[int, int]  # the first run's, the confirmation's
    code_lines: int
    invalid: str | None = None  # why it will not run (does not parse, no change)
    agent: AgentRecord | None = None
    notes_sha256: str | None = None  # the notes its proposal wrote (notes/<trial_id>.md), if it did
    created_at: str
    worker: str

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_canary(cls, data: Any) -> Any:
        return _legacy_canary(data, "source_sha256")

    @model_validator(mode="after")
    def _commit_unless_canary(self) -> Self:
        _check_commit(self.kind, self.candidate_commit)
        return self
