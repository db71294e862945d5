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
`SpendRecord`). They chain and verify like any row; `records()` returns the trials only. The row
schemas are in harness/records/schemas.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.records.schemas import CHAIN_KEYS, NON_TRIAL_KINDS, ProgramRecord, SpendRecord, TrialRecord

logger = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
GENESIS = "0" * 64
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
