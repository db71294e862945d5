"""Small helpers of the loop: trial ids, seeds, proposal validation, program.md, log tails and the
controller's file logs."""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import logging
import os
import re
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from harness.agents.base import LOG_TAIL_LIMIT, Usage
from harness.loop.errors import ProgramMissing

TRIAL_ID = re.compile(r"^t(\d{4,})$")
TRIAL_FOLDER = re.compile(r"^t(\d{4,})(\..*)?$")
MAX_TRAIN_PY_BYTES = 1_000_000
CONFIRM_SUFFIX = "-c1"
STARVED_BACKOFF_MAX_S = 600.0
RUN_FOLDER = re.compile(r"^run-\d+$")  # a confirmation run's folder (TrialPaths.run_dir)


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
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C (a KeyboardInterrupt in the main thread, which cancels the run)."""
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
def file_log(path: Path, *, thread_only: bool) -> Iterator[None]:
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
