"""The ledger: one JSON line per trial, hash-chained so that editing history is evident.

Each row carries `index` (its position), `prev_hash` (the previous row's `hash`; 64 zeros for the
first row) and `hash`: the SHA-256 of the row's canonical bytes without the `hash` key. Canonical
bytes are `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)` in UTF-8, and
every line is written in exactly that form, so `verify` also catches edits that keep the meaning
(reformatting) and any edit that changes a number, a status or a description.

Deliberate properties:
- Appends take a file lock (`ledger.jsonl.lock`), read the last line for the chain, write the row
  with one `write()` of one line on an O_APPEND descriptor, then fsync. Several processes can share
  one ledger (the `--workers` design): rows never interleave and none is lost.
- A torn final line (the controller died inside that one write) is the only damage ever repaired,
  and only by `repair_torn_tail`, which the loop calls at start: the fragment is saved next to the
  ledger and cut off. Anything else wrong is reported by `verify` and left exactly as it is.
- Tamper evidence, not tamper proof: whoever can write the file can rewrite the whole chain. The
  last row's hash, copied elsewhere (the report prints it), pins everything before it.

Most rows are trials (`TrialRecord`); two kinds are not (`NON_TRIAL_KINDS`): `program` (a step of the
opt-in program evolution, `ProgramRecord`) and `spend` (the cost of a proposal that produced no trial,
`SpendRecord`). They chain and verify like any row; `records()` returns the trials only.

The module also holds the schemas of the run folder's other records: `TrialRecord` (a ledger row),
`TrialPlan` (a trial folder's trial.json, written before the trial runs), `RunMeta` (run.json), and
the helpers that write and hash a trial folder's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field

from harness.agents.base import Usage
from harness.judge import JudgedRow, JudgeSettings
from harness.results import ResultRow
from sandbox.constants import Decision, Status
from sandbox.incontainer.fileio import sha256_file
from sandbox.verdict import NodeInfo

logger = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
GENESIS = "0" * 64
CHAIN_KEYS = ("index", "prev_hash", "hash")
_TAIL_CHUNK = 64 * 1024


class LedgerError(Exception):
    """The ledger cannot be appended to or read as it is."""


class TornTail(LedgerError):
    """The last line has no newline: a write was cut short. `repair_torn_tail` fixes exactly this."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The bytes a row is hashed and written as."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of the row's canonical bytes, without its own `hash` key."""
    return hashlib.sha256(canonical({k: v for k, v in row.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class BadRow:
    index: int  # 0-based row number
    why: str

    @property
    def line(self) -> int:
        return self.index + 1

    def __str__(self) -> str:
        return f"row {self.index} (line {self.line}): {self.why}"


@dataclass(frozen=True)
class VerifyResult:
    rows: int  # rows that verified before the first bad one
    last_hash: str  # hash of the last good row (GENESIS for none)
    bad: BadRow | None

    @property
    def ok(self) -> bool:
        return self.bad is None


def _check_line(raw: bytes, index: int, prev_hash: str) -> tuple[dict[str, Any] | None, str]:
    """(row, "") when the line verifies against its predecessor, else (None, why)."""
    try:
        row = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc.msg if isinstance(exc, json.JSONDecodeError) else exc})"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    missing = [k for k in CHAIN_KEYS if k not in row]
    if missing:
        return None, f"missing {', '.join(missing)}"
    if row["index"] != index:
        return None, f"index is {row['index']!r}, expected {index} (a row was removed, added or moved)"
    if row["prev_hash"] != prev_hash:
        return None, "prev_hash does not match the previous row's hash (a row was removed, added or moved)"
    if row_hash(row) != row["hash"]:
        return None, "hash does not match the row's content (the row was edited)"
    try:
        same_bytes = canonical(row) == raw
    except ValueError:
        same_bytes = False
    if not same_bytes:
        return None, "the line is not in canonical form (it was rewritten by hand)"
    return row, ""


def verify(path: Path) -> VerifyResult:
    """Re-hash the chain; report the first bad row. `path` is a ledger file or a run folder."""
    if path.is_dir():
        path = path / LEDGER_FILE
    if not path.exists():
        return VerifyResult(rows=0, last_hash=GENESIS, bad=None)
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    result = verify_prefix(data[:cut])
    if result.ok and cut < len(data):
        why = "incomplete final line (no newline): a write was cut short; the next `run` repairs it"
        return VerifyResult(rows=result.rows, last_hash=result.last_hash, bad=BadRow(result.rows, why))
    return result


def verify_prefix(data: bytes) -> VerifyResult:
    """`verify` on bytes that end with a newline (or are empty)."""
    prev = GENESIS
    lines = data.split(b"\n")[:-1]
    for index, raw in enumerate(lines):
        row, why = _check_line(raw, index, prev)
        if row is None:
            return VerifyResult(rows=index, last_hash=prev, bad=BadRow(index, why))
        prev = row["hash"]
    return VerifyResult(rows=len(lines), last_hash=prev, bad=None)


def _last_line(fd: int, size: int) -> bytes:
    """The last line of a file that ends with a newline (without that newline)."""
    pos = size - 1  # the final newline
    buf = b""
    while True:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        cut = buf.rfind(b"\n")
        if cut != -1:
            return buf[cut + 1 :]
        if start == 0:
            return buf
        pos = start


class Ledger:
    """One run's ledger file."""

    def __init__(self, path: Path, *, lock_timeout: float = 120.0) -> None:
        self.path = path
        self._lock = FileLock(f"{path}.lock", timeout=lock_timeout)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger lock across a read-decide-append sequence (re-entrant in one process)."""
        with self._lock:
            yield

    def append(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Chain and append one row; returns it as written (with index, prev_hash and hash)."""
        clash = [k for k in CHAIN_KEYS if k in row]
        if clash:
            raise ValueError(f"the ledger sets {', '.join(clash)} itself")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    raise TornTail(
                        f"{self.path} ends with an incomplete line; start `run` again to repair it"
                    )
                if size:
                    last = json.loads(_last_line(fd, size))
                    index, prev = int(last["index"]) + 1, str(last["hash"])
                else:
                    index, prev = 0, GENESIS
                full = {**row, "index": index, "prev_hash": prev}
                full["hash"] = row_hash(full)
                data = canonical(full) + b"\n"
                written = os.write(fd, data)
                if written != len(data):
                    raise LedgerError(f"short write to {self.path} ({written} of {len(data)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
        return full

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row, parsed (no verification; a torn final line is skipped)."""
        if not self.path.exists():
            return []
        rows: list[dict[str, Any]] = []
        for number, line in enumerate(self.path.read_bytes().split(b"\n")[:-1], start=1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise LedgerError(
                    f"{self.path} line {number} is not valid JSON ({exc}); run verify-ledger"
                ) from None
            rows.append(row)
        return rows

    def records(self) -> list[TrialRecord]:
        """The trial rows (the rows of NON_TRIAL_KINDS are read with `programs` and `spends`)."""
        return [
            TrialRecord.model_validate(row) for row in self.rows() if row.get("kind") not in NON_TRIAL_KINDS
        ]

    def programs(self) -> list[ProgramRecord]:
        return [ProgramRecord.model_validate(row) for row in self.rows() if row.get("kind") == "program"]

    def spends(self) -> list[SpendRecord]:
        return [SpendRecord.model_validate(row) for row in self.rows() if row.get("kind") == "spend"]

    def verify(self) -> VerifyResult:
        return verify(self.path)

    def repair_torn_tail(self) -> str | None:
        """Fix an incomplete final line, and only that. Returns what was done, or None.

        A fragment that is a complete, correctly chained row (only the newline missing) gets its
        newline. Any other fragment is saved to `ledger.jsonl.torn-<time>` and cut off: it is a
        row that was never fully written, so no reader ever saw it.
        """
        with self._lock:
            if not self.path.exists():
                return None
            data = self.path.read_bytes()
            if not data or data.endswith(b"\n"):
                return None
            cut = data.rfind(b"\n") + 1
            fragment = data[cut:]
            check = verify_prefix(data[:cut])
            if check.ok:
                row, _ = _check_line(fragment, check.rows, check.last_hash)
                if row is not None:
                    with self.path.open("ab") as f:
                        f.write(b"\n")
                        f.flush()
                        os.fsync(f.fileno())
                    what = f"row {check.rows} was complete but for its newline; newline added"
                    logger.warning("%s: %s", self.path, what)
                    return what
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            aside = self.path.with_name(f"{self.path.name}.torn-{stamp}")
            aside.write_bytes(fragment)
            with self.path.open("r+b") as f:
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            what = f"cut an incomplete final line of {len(fragment)} bytes (saved to {aside.name})"
            logger.warning("%s: %s", self.path, what)
            return what


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class TrialRecord(BaseModel):
    """One ledger row: everything needed to audit one trial without its folder."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1
    trial_id: str
    kind: TrialKind
    worker: str
    parent_commit: str | None
    candidate_commit: str
    status: Status  # of the run that decided (the first run that was not ok, else the first run)
    decision: Decision
    reason: str
    description: str
    val_bpb: float | None  # verified score: the mean of the ok runs judged (None: no score)
    claimed_val_bpb: float | None = None  # what the candidate printed, if anything (audit only)
    memory_gb: float | None = None  # the largest peak of its runs
    code_lines: int
    seeds: list[int] = Field(default_factory=list)
    runs: list[RunRecord] = Field(default_factory=list)  # empty: never ran (does not parse, no change)
    judge: dict[str, Any] | None = None  # the Judgement, with the bar and threshold used
    images: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    gpu_ids: list[str] = Field(default_factory=list)
    hashes: dict[str, str] = Field(default_factory=dict)  # path in the trial folder -> sha256
    agent: AgentRecord | None = None
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
            commit=self.candidate_commit,
            val_bpb=self.val_bpb,
            memory_gb=self.memory_gb,
            status=self.decision.value,
            description=self.description,
        )

    def judged(self) -> JudgedRow:
        return JudgedRow(
            trial_id=self.trial_id,
            kind=self.kind,
            decision=self.decision,
            val_bpb=self.val_bpb,
            candidate_commit=self.candidate_commit,
            code_lines=self.code_lines,
            measurements=tuple(
                (run.commit or self.candidate_commit, run.val_bpb)
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
    candidate_commit: str
    description: str
    seeds: tuple[int, int]  # the first run's, the confirmation's
    code_lines: int
    invalid: str | None = None  # why it will not run (does not parse, no change)
    agent: AgentRecord | None = None
    notes_sha256: str | None = None  # the notes its proposal wrote (notes/<trial_id>.md), if it did
    created_at: str
    worker: str


def hash_tree(folder: Path, *, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every regular file under `folder` (symlinks not followed), by relative path."""
    hashes: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skip or path.is_symlink() or not path.is_file():
                continue
            hashes[rel] = sha256_file(path)
    return hashes
