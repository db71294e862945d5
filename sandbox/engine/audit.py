"""A trial's audit trail: what the controller denied or rejected, and why, as JSON lines.

`audit.jsonl` in the trial folder holds one JSON object per line with exactly the keys `time` (ISO
8601 UTC: when the controller sent a signal, else when it observed and recorded the event), `trial_id`, `container` (`trial`, `train` or `eval`),
`event` and `detail` (an object). The events, in the order a trial produces them, are listed in
docs/ARCHITECTURE.md ("audit.jsonl events", under "The trial template").

Deliberate properties:
- Only what the controller observed goes in: the engine's (or the process's) exit state, the
  controller's own signals, the output channel as seen from outside, the evaluator's report. Never
  anything the candidate printed: its log is kept apart, as untrusted text.
- Both backends derive the events from the same engine-neutral values (`TrainOutcome`,
  `EvalOutcome`, the report, the verdict) through the functions below, so the same outcome gives
  the same events whichever backend ran it; the backends add only what they timed themselves
  (when a signal was sent) and the engine's container name.
- Append-only, one `write()` per line on an O_APPEND descriptor, flushed: a sandbox retry of the same
  trial appends a new `limits` event and its own events after the failed attempt's, so nothing an
  auditor might want is overwritten.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from sandbox import constants as C
from sandbox.engine.limits import Limits
from sandbox.report import EvalReport
from sandbox.verdict import (
    SIGXFSZ_EXIT,
    EvalOutcome,
    EvaluatorFailed,
    TrainOutcome,
    TrialSpec,
    Verdict,
    classify_eval,
    classify_train,
)

logger = logging.getLogger(__name__)

KEYS: Final = ("time", "trial_id", "container", "event", "detail")
TRIAL: Final = "trial"
TRAIN: Final = "train"
EVAL: Final = "eval"
# Events that record the controller stopping, capping or refusing something (the rest are facts).
DENIALS: Final = frozenset(
    {
        "sigterm",
        "sigkill",
        "oom_kill",
        "output_cap",
        "operator_not_allowed",
        "artifact_rejected",
        "probe_failed",
        "runtime_rejected",
    }
)
OP_NOT_ALLOWED_CHECK: Final = "artifact:op_not_allowed"
# Which of the report's `probe_deviation_nats` keys belong to a probe (default: the probe's name).
_MEASURES: Final = {"row_independence": ("rows",)}


@dataclass(frozen=True)
class Event:
    container: str
    event: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: float | None = None  # when it happened (epoch seconds), if the controller timed it; else now


Signals = Mapping[str, tuple[float, float]]  # signal -> (seconds after the start request, epoch time)


# --------------------------------------------------------------------------- events from outcomes


def limit_events(spec: TrialSpec, *, backend: str, images: Mapping[str, str] | None = None) -> list[Event]:
    return [
        Event(
            TRIAL,
            "limits",
            {
                "backend": backend,
                "profile": spec.profile,
                "seed": spec.seed,
                "gpu_ids": list(spec.gpu_ids),
                "images": dict(images or {}),
                "limits": spec.limits.model_dump(mode="json"),
            },
        )
    ]


def train_events(
    outcome: TrainOutcome,
    limits: Limits,
    *,
    signals: Signals | None = None,
    name: str | None = None,
) -> list[Event]:
    """The TRAIN step's events; `signals`: when the backend sent SIGTERM / SIGKILL."""
    signals = signals or {}
    events: list[Event] = []
    if outcome.sigterm_sent:
        events.append(
            Event(
                TRAIN,
                "sigterm",
                {"at_s": _at_s(signals, "SIGTERM"), "budget_s": limits.time_budget_s},
                _at(signals, "SIGTERM"),
            )
        )
    if outcome.sigkilled:
        events.append(
            Event(
                TRAIN,
                "sigkill",
                {
                    "at_s": _at_s(signals, "SIGKILL"),
                    "budget_s": limits.time_budget_s,
                    "grace_s": limits.kill_grace_s,
                },
                _at(signals, "SIGKILL"),
            )
        )
    if outcome.oom_killed:
        events.append(Event(TRAIN, "oom_kill", {"mem_limit_mb": limits.mem_limit_mb}))
    if outcome.output_full or outcome.exit_code == SIGXFSZ_EXIT:
        how = "the output channel is full" if outcome.output_full else "a write died of SIGXFSZ"
        events.append(Event(TRAIN, "output_cap", {"output_limit_mb": limits.output_limit_mb, "how": how}))
    early = classify_train(outcome)
    status, reason = early if early is not None else ("eval", "exited 0 with model.pt2: handed to EVAL")
    events.append(
        Event(
            TRAIN,
            "exit",
            {
                "exit_code": outcome.exit_code,
                "wall_s": _round(outcome.wall_s),
                "oom_killed": outcome.oom_killed,
                "sigterm_sent": outcome.sigterm_sent,
                "sigkilled": outcome.sigkilled,
                "artifact_present": outcome.artifact_present,
                "status": str(status),
                "reason": reason,
            },
        )
    )
    return _named(events, name)


def eval_events(
    outcome: EvalOutcome,
    limits: Limits,
    *,
    signals: Signals | None = None,
    name: str | None = None,
) -> list[Event]:
    """The EVAL step's events, the evaluator's rejections (from its report) included."""
    signals = signals or {}
    events: list[Event] = []
    if outcome.timed_out:
        events.append(
            Event(
                EVAL,
                "sigkill",
                {"at_s": _at_s(signals, "SIGKILL"), "eval_timeout_s": limits.eval_timeout_s},
                _at(signals, "SIGKILL"),
            )
        )
    if outcome.oom_killed:
        events.append(Event(EVAL, "oom_kill", {"eval_mem_limit_mb": limits.eval_mem_limit_mb}))
    exit_detail: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "wall_s": _round(outcome.wall_s),
        "oom_killed": outcome.oom_killed,
        "timed_out": outcome.timed_out,
    }
    try:
        status, _, reason = classify_eval(outcome)
    except EvaluatorFailed as exc:
        events.append(Event(EVAL, "exit", exit_detail | {"status": "infrastructure", "reason": str(exc)}))
        events.append(Event(EVAL, "evaluator_failed", {"reason": str(exc)}))
        return _named(events, name)
    events.append(Event(EVAL, "exit", exit_detail | {"status": status.value, "reason": reason}))
    if outcome.report is not None and outcome.exit_code == 0:
        events += report_events(outcome.report)
    return _named(events, name)


def report_events(report: EvalReport) -> list[Event]:
    """The rejections the evaluator's report records: its deciding check and every failed probe."""
    events: list[Event] = []
    check, reason = report.check, report.reason
    if check is not None:
        if check == OP_NOT_ALLOWED_CHECK:
            events.append(Event(EVAL, "operator_not_allowed", {"check": check, "reason": reason}))
        elif check.startswith("artifact:"):
            events.append(Event(EVAL, "artifact_rejected", {"check": check, "reason": reason}))
        elif not check.startswith("probe:"):  # probes get one event each below
            events.append(Event(EVAL, "runtime_rejected", {"check": check, "reason": reason}))
    for probe, result in report.probes.items():
        if result.passed:
            continue
        prefixes = _MEASURES.get(probe, (probe,))
        measured = {k: v for k, v in report.probe_deviation_nats.items() if k.startswith(prefixes)}
        detail: dict[str, Any] = {"probe": probe, "detail": result.detail}
        detail["deviation_nats"] = measured
        detail["deciding"] = check == f"probe:{probe}"
        events.append(Event(EVAL, "probe_failed", detail))
    return events


def verdict_events(verdict: Verdict) -> list[Event]:
    return [
        Event(
            TRIAL,
            "verdict",
            {"status": verdict.status.value, "val_bpb": verdict.val_bpb, "reason": verdict.reason},
        )
    ]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _at_s(signals: Signals, sig: str) -> float | None:
    return _round(signals[sig][0]) if sig in signals else None


def _at(signals: Signals, sig: str) -> float | None:
    return signals[sig][1] if sig in signals else None


def _named(events: list[Event], name: str | None) -> list[Event]:
    """Add the engine's container name (when there is one) to each event's detail."""
    if name is None:
        return events
    return [Event(e.container, e.event, {**e.detail, "container_name": name}, e.at) for e in events]


# --------------------------------------------------------------------------- the file


class AuditTrail:
    """Appends one trial's events to `<trial_dir>/audit.jsonl`."""

    def __init__(self, trial_dir: Path, trial_id: str) -> None:
        self.path = trial_dir / C.AUDIT_FILE
        self.trial_id = trial_id

    def record(self, events: list[Event]) -> None:
        if not events:
            return
        lines = "".join(
            json.dumps(
                {
                    "time": (
                        datetime.fromtimestamp(e.at, UTC) if e.at is not None else datetime.now(UTC)
                    ).isoformat(timespec="milliseconds"),
                    "trial_id": self.trial_id,
                    "container": e.container,
                    "event": e.event,
                    "detail": e.detail,
                },
                sort_keys=False,
                default=str,
            )
            + "\n"
            for e in events
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        for e in events:
            if e.event in DENIALS:
                logger.info("audit: %s %s %s", e.container, e.event, e.detail)

    # The backends' hooks: one call per step.

    def start(self, spec: TrialSpec, *, backend: str, images: Mapping[str, str] | None = None) -> None:
        self.record(limit_events(spec, backend=backend, images=images))

    def train(
        self,
        outcome: TrainOutcome,
        limits: Limits,
        *,
        signals: Signals | None = None,
        name: str | None = None,
    ) -> None:
        self.record(train_events(outcome, limits, signals=signals, name=name))

    def eval(
        self,
        outcome: EvalOutcome,
        limits: Limits,
        *,
        signals: Signals | None = None,
        name: str | None = None,
    ) -> None:
        self.record(eval_events(outcome, limits, signals=signals, name=name))

    def verdict(self, verdict: Verdict) -> None:
        self.record(verdict_events(verdict))

    def infrastructure_error(self, exc: BaseException) -> None:
        self.record(
            [Event(TRIAL, "infrastructure_error", {"error": type(exc).__name__, "message": str(exc)})]
        )


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The events of an audit.jsonl; a line that is not a JSON object comes back as an `unreadable` event."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                yield event
            else:
                detail = {"line": number, "text": line[:200]}
                yield {"time": "", "trial_id": "", "container": "", "event": "unreadable", "detail": detail}
