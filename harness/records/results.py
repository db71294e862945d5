"""results.tsv: the reference's five-column summary, so existing analysis scripts keep working.

Format (the reference's): a header line `commit val_bpb memory_gb status description` joined by
tabs, then one row per trial: the candidate commit's short hash, val_bpb with 6 decimals
(`0.000000` when the trial has no score), peak memory in GB with 1 decimal, the judge's decision
(keep, discard, crash, baseline) and a one-line description.

Deliberate properties:
- The ledger is the record; this file is derived from it and can be rebuilt (`rows_for`), leaving
  out control trials (canary rows: they are in the ledger only). The loop
  appends a row right after the ledger row, under the ledger's lock, so both files list trials in
  the same order, and `sync` appends whatever a crash between the two writes left out.
- Appends hold a file lock, write one line with one `write()`, then flush and fsync.
- Descriptions come from the agent: tabs, newlines and other control characters are replaced so a
  description can never add a column or a row.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from filelock import FileLock
from pydantic import BaseModel, ConfigDict

from sandbox.constants import RESULTS_TSV_COLUMNS

logger = logging.getLogger(__name__)

HEADER = "\t".join(RESULTS_TSV_COLUMNS)
DESCRIPTION_LIMIT = 300
SHORT_COMMIT = 7


class ResultsError(Exception):
    """results.tsv exists but is not a results file this code wrote (wrong header or columns)."""


class ResultRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    commit: str
    val_bpb: float | None
    memory_gb: float | None
    status: str
    description: str


_SPACES = re.compile(r"\s+")


def sanitize_description(text: str, *, limit: int = DESCRIPTION_LIMIT) -> str:
    """One line of plain text: control characters become spaces, runs of spaces collapse, capped."""
    cleaned = "".join(" " if unicodedata.category(ch) in {"Cc", "Zl", "Zp"} else ch for ch in text)
    cleaned = _SPACES.sub(" ", cleaned).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def format_row(row: ResultRow) -> str:
    """One TSV line (no newline) in the reference's number formats."""
    val = f"{row.val_bpb:.6f}" if row.val_bpb is not None else f"{0.0:.6f}"
    mem = f"{row.memory_gb:.1f}" if row.memory_gb is not None else f"{0.0:.1f}"
    return "\t".join((row.commit[:SHORT_COMMIT], val, mem, row.status, sanitize_description(row.description)))


def parse_line(line: str) -> ResultRow:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != len(RESULTS_TSV_COLUMNS):
        raise ResultsError(
            f"expected {len(RESULTS_TSV_COLUMNS)} tab-separated fields, got {len(fields)}: {line!r}"
        )
    commit, val, mem, status, description = fields
    value = float(val)
    return ResultRow(
        commit=commit,
        val_bpb=value if value > 0 else None,
        memory_gb=float(mem),
        status=status,
        description=description,
    )


class ResultsFile:
    """Append-only access to one run's results.tsv."""

    def __init__(self, path: Path, *, lock_timeout: float = 60.0) -> None:
        self.path = path
        self._lock = FileLock(f"{path}.lock", timeout=lock_timeout)

    def read(self) -> list[ResultRow]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        if not lines:
            return []
        if lines[0] != HEADER:
            raise ResultsError(f"{self.path}: unexpected header {lines[0]!r}; expected {HEADER!r}")
        return [parse_line(line) for line in lines[1:] if line]

    def append(self, rows: Sequence[ResultRow]) -> None:
        """Append rows (writing the header first if the file is new), durably."""
        if not rows:
            return
        text = "".join(format_row(row) + "\n" for row in rows)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if os.fstat(fd).st_size == 0:
                    text = HEADER + "\n" + text
                else:
                    self._check_header()
                data = text.encode("utf-8")
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)

    def sync(self, expected: Sequence[ResultRow]) -> int:
        """Append the tail of `expected` (rows derived from the ledger) that the file lacks.

        Returns how many rows were appended. A file with more rows than the ledger, or whose rows
        disagree with it, is reported and left alone: the ledger is the record, and this file is
        never rewritten behind the user's back.
        """
        with self._lock:
            have = self.read()
            for i, (got, want) in enumerate(zip(have, expected, strict=False)):
                if format_row(got) != format_row(want):
                    logger.warning(
                        "%s row %d differs from the ledger (%r vs %r); leaving the file as it is",
                        self.path,
                        i + 1,
                        format_row(got),
                        format_row(want),
                    )
                    return 0
            if len(have) > len(expected):
                logger.warning(
                    "%s has %d rows but the ledger %d; leaving the file as it is",
                    self.path,
                    len(have),
                    len(expected),
                )
                return 0
            missing = list(expected[len(have) :])
            self.append(missing)
        if missing:
            logger.warning("appended %d row(s) to %s that a crash had left out", len(missing), self.path)
        return len(missing)

    def _check_header(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
        if first != HEADER:
            raise ResultsError(f"{self.path}: unexpected header {first!r}; expected {HEADER!r}")


class ResultRowSource(Protocol):
    """Anything that renders itself as a results.tsv row (the ledger's TrialRecord)."""

    @property
    def kind(self) -> str: ...

    def result_row(self) -> ResultRow: ...


CONTROL_KINDS = frozenset({"canary"})


def rows_for(records: Iterable[ResultRowSource]) -> list[ResultRow]:
    """results.tsv rows derived from ledger records, in order.

    Control trials (the run canary, a known cheat) are left out: results.tsv lists experiments, and a
    reference analysis script would plot a control's score (or its `0.000000`) as one of them.
    """
    return [record.result_row() for record in records if record.kind not in CONTROL_KINDS]
