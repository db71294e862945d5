"""The live view of a running loop: a rich panel on a terminal, plain log lines otherwise.

The loop reports events (a banner, the phase of the current trial, each recorded trial) to
a `Progress`; it never formats output itself. Both views write to stderr, so stdout stays clean
for whatever a script pipes out of the commands.

Deliberate properties:
- `make_progress` picks the rich view only when stderr is a terminal: overnight runs under nohup,
  systemd or CI get one log line per event, which greps and tails well.
- While the rich view is live, log records of the root logger's stderr handlers are rerouted
  through rich, so a warning prints above the panel instead of tearing it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import IO, Any, Protocol

from harness.judge import JudgeState
from harness.records.schemas import TrialRecord
from sandbox.constants import Decision

logger = logging.getLogger(__name__)

RECENT_ROWS = 12
_STYLE = {
    Decision.KEEP: "bold green",
    Decision.DISCARD: "dim",
    Decision.CRASH: "red",
    Decision.BASELINE: "cyan",
    Decision.CANARY: "magenta",
}


class Progress(Protocol):
    def start(self, banner: Sequence[str]) -> None: ...
    def phase(self, trial_id: str, text: str) -> None: ...
    def recorded(self, record: TrialRecord, state: JudgeState) -> None: ...
    def stop(self) -> None: ...


def _delta(record: TrialRecord, state: JudgeState) -> str:
    if record.val_bpb is None or state.noise is None:
        return ""
    return f"{record.val_bpb - state.noise.mean:+.6f}"


def _val(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "-"


class LogProgress:
    """One log line per event (the view for non-terminals and tests)."""

    def start(self, banner: Sequence[str]) -> None:
        for line in banner:
            logger.info("%s", line)

    def phase(self, trial_id: str, text: str) -> None:
        logger.info("%s: %s", trial_id, text)

    def recorded(self, record: TrialRecord, state: JudgeState) -> None:
        best = state.best.val_bpb if state.best is not None else None
        logger.info(
            "%s %s: %s val_bpb=%s (vs baseline %s) best=%s | %s",
            record.trial_id,
            record.decision.value,
            record.status.value,
            _val(record.val_bpb),
            _delta(record, state) or "-",
            _val(best),
            record.reason,
        )

    def stop(self) -> None:
        return None


class RichProgress:
    """A live panel: the run's totals, the current trial's phase, the last trials."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, stderr=stream is None)
        self._banner: list[str] = []
        self._rows: deque[tuple[TrialRecord, str]] = deque(maxlen=RECENT_ROWS)
        self._counts = {d: 0 for d in Decision}
        self._state = JudgeState()
        self._phase = ""
        self._phase_since = time.monotonic()
        self._live: Any = None
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []

    def start(self, banner: Sequence[str]) -> None:
        from rich.live import Live
        from rich.logging import RichHandler

        self._banner = list(banner)
        for line in banner:
            self.console.print(line, highlight=False)
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
                sys.stderr,
                sys.__stderr__,
            ):
                rich_handler = RichHandler(console=self.console, show_path=False, level=handler.level)
                root.removeHandler(handler)
                root.addHandler(rich_handler)
                self._swapped.append((handler, rich_handler))
        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def phase(self, trial_id: str, text: str) -> None:
        self._phase = f"{trial_id}: {text}"
        self._phase_since = time.monotonic()

    def recorded(self, record: TrialRecord, state: JudgeState) -> None:
        self._counts[record.decision] += 1
        self._rows.append((record, _delta(record, state)))
        self._state = state
        self._phase = ""

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        root = logging.getLogger()
        for original, rich_handler in self._swapped:
            root.removeHandler(rich_handler)
            root.addHandler(original)
        self._swapped.clear()

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        state = self._state
        totals = ", ".join(f"{self._counts[d]} {d.value}" for d in Decision)
        best = state.best
        line = Text(f"trials: {totals}")
        if best is not None and state.noise is not None:
            line.append(
                f"   best {best.val_bpb:.6f} ({best.val_bpb - state.noise.mean:+.6f} vs baseline)"
                f"   noise threshold ±{state.noise.threshold:.6f}",
                style="green",
            )
        table = Table(expand=True, show_edge=False, pad_edge=False)
        for column in ("trial", "decision", "val_bpb", "Δ baseline", "mem GB", "description"):
            table.add_column(column, no_wrap=column != "description", overflow="ellipsis")
        for record, delta in self._rows:
            table.add_row(
                record.trial_id,
                Text(record.decision.value, style=_STYLE[record.decision]),
                _val(record.val_bpb),
                delta,
                f"{record.memory_gb:.1f}" if record.memory_gb is not None else "-",
                record.description,
            )
        parts: list[Any] = [line, table]
        if self._phase:
            elapsed = time.monotonic() - self._phase_since
            parts.append(Text(f"{self._phase}  ({elapsed:.0f}s)", style="yellow"))
        return Panel(Group(*parts), title="autoresearch", border_style="blue")


def make_progress(stream: IO[str] | None = None) -> Progress:
    """The rich view when the stream (stderr by default) is a terminal, else plain log lines."""
    target = stream or sys.stderr
    if target.isatty():
        return RichProgress(stream)
    return LogProgress()
