"""dispatches.jsonl: every dispatch of a trial to a node, recorded before it leaves the controller.

One JSON line per event, appended with one `write()` under a file lock (`dispatches.jsonl.lock`)
plus a thread lock, then fsynced:

    {"event": "dispatch", "dispatch_id", "trial_id", "attempt", "node_id", "node_name", "at", "session"}
    {"event": "accepted" | "lost" | "failed" | "cancelled" | "orphaned" | "duplicate",
     "dispatch_id", "trial_id", "why", "at", "session"}

A dispatch is *open* from its `dispatch` line until the first closing line. The rules that make the
controller the only writer of a trial's results, whatever Ray retries or delivers late:

- `accept(dispatch_id)` succeeds only for an open dispatch, and closes it. A second result for the
  same dispatch, or one for a dispatch already closed as lost or cancelled, is refused (and
  recorded as a `duplicate` line, so the journal shows it was seen and dropped).
- A trial has at most one open dispatch at a time in a session: the next attempt is opened only
  after the previous one was closed (`lost`, `failed`).
- A new controller session closes every dispatch an earlier session left open as `orphaned`:
  the process that could have received its result is gone, so none can ever be accepted; the
  resumed loop runs the trial again as a new dispatch with the next attempt number.

The journal never decides what a trial scored; the ledger does. It answers "which result may be
written", which is why it lives next to the ledger and is written only by the controller.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

logger = logging.getLogger(__name__)

JOURNAL_FILE = "dispatches.jsonl"
CLOSING = frozenset({"accepted", "lost", "failed", "cancelled", "orphaned"})


class JournalError(Exception):
    """The dispatch journal cannot be read or appended to."""


@dataclass(frozen=True)
class Dispatch:
    dispatch_id: str
    trial_id: str
    attempt: int
    node_id: str
    node_name: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class DispatchJournal:
    """The run folder's dispatch journal (see the module docstring)."""

    def __init__(self, run_dir: Path, *, lock_timeout: float = 60.0) -> None:
        self.path = run_dir / JOURNAL_FILE
        self.session = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._file_lock = FileLock(f"{self.path}.lock", timeout=lock_timeout)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def events(self) -> list[dict[str, Any]]:
        """Every complete line (a torn last line, from a controller killed mid-write, is skipped)."""
        if not self.path.exists():
            return []
        events: list[dict[str, Any]] = []
        lines = self.path.read_bytes().split(b"\n")
        for number, line in enumerate(lines[:-1], start=1):
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise JournalError(f"{self.path} line {number} is not valid JSON ({exc})") from None
            if isinstance(event, dict):
                events.append(event)
        return events

    def state(self) -> dict[str, str]:
        """dispatch_id -> "open" or the event that closed it."""
        state: dict[str, str] = {}
        for e in self.events():
            did = str(e.get("dispatch_id", ""))
            if e.get("event") == "dispatch":
                state[did] = "open"
            elif e.get("event") in CLOSING and state.get(did) == "open":
                state[did] = str(e["event"])
        return state

    def open_dispatches(self) -> list[Dispatch]:
        opened = {str(e["dispatch_id"]): e for e in self.events() if e.get("event") == "dispatch"}
        return [
            Dispatch(
                dispatch_id=did,
                trial_id=str(e["trial_id"]),
                attempt=int(e["attempt"]),
                node_id=str(e["node_id"]),
                node_name=str(e.get("node_name", "")),
            )
            for did, status in self.state().items()
            if status == "open" and (e := opened.get(did)) is not None
        ]

    def attempts(self, trial_id: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == "dispatch" and e.get("trial_id") == trial_id)

    # ------------------------------------------------------------------ writing

    def _append(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise JournalError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)

    def close_orphans(self) -> list[Dispatch]:
        """Close what an earlier session left open (its results can never arrive); returns them."""
        with self._lock, self._file_lock:
            orphans = [d for d in self.open_dispatches()]
            for d in orphans:
                self._append(
                    {
                        "event": "orphaned",
                        "dispatch_id": d.dispatch_id,
                        "trial_id": d.trial_id,
                        "why": "left open by an earlier controller session; the trial is run again",
                        "at": _now(),
                        "session": self.session,
                    }
                )
        for d in orphans:
            logger.warning(
                "dispatch %s of %s (attempt %d) was left open: closed", d.dispatch_id, d.trial_id, d.attempt
            )
        return orphans

    def open(self, trial_id: str, node_id: str, node_name: str) -> Dispatch:
        """Record a dispatch before it leaves; refuses while the trial has an open one."""
        with self._lock, self._file_lock:
            if any(d.trial_id == trial_id for d in self.open_dispatches()):
                raise JournalError(f"{trial_id} already has an open dispatch")
            attempt = self.attempts(trial_id) + 1
            d = Dispatch(
                dispatch_id=f"{trial_id}.a{attempt}.{secrets.token_hex(3)}",
                trial_id=trial_id,
                attempt=attempt,
                node_id=node_id,
                node_name=node_name,
            )
            self._append(
                {
                    "event": "dispatch",
                    "dispatch_id": d.dispatch_id,
                    "trial_id": trial_id,
                    "attempt": attempt,
                    "node_id": node_id,
                    "node_name": node_name,
                    "at": _now(),
                    "session": self.session,
                }
            )
            return d

    def close(self, d: Dispatch, event: str, why: str = "") -> bool:
        """Close an open dispatch with `event`. False (and a `duplicate` line) when it was not open:
        for `accepted`, that means the result must be dropped."""
        if event not in CLOSING:
            raise ValueError(f"not a closing event: {event}")
        with self._lock, self._file_lock:
            status = self.state().get(d.dispatch_id)
            if status != "open":
                self._append(
                    {
                        "event": "duplicate",
                        "dispatch_id": d.dispatch_id,
                        "trial_id": d.trial_id,
                        "why": f"{event} for a dispatch that is {status or 'unknown'}: ignored",
                        "at": _now(),
                        "session": self.session,
                    }
                )
                logger.warning(
                    "%s of dispatch %s ignored: it is %s", event, d.dispatch_id, status or "unknown"
                )
                return False
            self._append(
                {
                    "event": event,
                    "dispatch_id": d.dispatch_id,
                    "trial_id": d.trial_id,
                    "why": why,
                    "at": _now(),
                    "session": self.session,
                }
            )
            return True


def journal_summary(run_dir: Path) -> dict[str, int]:
    """How many of a run folder's dispatches ended how ("open" for those still open)."""
    return dict(Counter(DispatchJournal(run_dir).state().values()))
