"""The run canary: a known cheat, run through the same sandbox as every candidate, that must be rejected.

Every security test proves the isolation once, in CI. The canary proves it again inside the run, on the
machine, engine, images, data and limits the night's numbers come from: a configuration that drifted
(a data mount that now includes val/, a network left on, an evaluator whose probes stopped working)
shows up within `canary_interval` candidates instead of never.

The canary is `harness/canary_train.py` (controller-owned, never shown to the agent). It tries the
cheapest breakouts; if one succeeds it exports an honest model (so the trial scores), otherwise a
model that reads the next token (so the causality probe must reject it). Hence the rule: a canary
passes only when it comes back `rejected` by `probe:causality`. Anything else (ok with a score, a
rejection by another check, crash, timeout) means the control no longer shows what it must, and the
run stops with `IsolationBroken` (exit code 8 from `python -m harness run`).

Cadence (decided from the ledger alone, so a resumed run neither skips nor repeats one): one canary
right after the baseline, then one whenever `canary_interval` candidate trials were recorded since
the last canary, one more before the run stops at `max_trials` (so the last candidates are vouched
for too), and one first thing when the last canary failed (a restarted run goes on only once a
canary is rejected again). `canary_interval = 0` runs none, and the banner says so.

A canary trial is a ledger row with `kind = "canary"`, `decision = "canary"` and a `canary` field
(`CanaryCheck`); it is never judged, never counts towards `max_trials`, is not in results.tsv, is
hidden from the agent's history and touches no lineage ref (its source is no commit).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.config import TrialPaths
from harness.judge import code_lines
from harness.records.schemas import CanaryCheck, TrialPlan, TrialRecord
from sandbox import constants as C
from sandbox.constants import Decision, Status
from sandbox.incontainer.fileio import atomic_write
from sandbox.verdict import Verdict

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("canary_train.py")
EXPECTED_STATUS = Status.REJECTED
EXPECTED_CHECK = "probe:causality"
EXPECTED = f"{EXPECTED_STATUS.value} by {EXPECTED_CHECK}"
MARKER = "CANARY "  # the line canary_train.py prints with what it tried


def source_text() -> str:
    return SOURCE.read_text(encoding="utf-8")


def source_sha256(text: str | None = None) -> str:
    return hashlib.sha256((text if text is not None else source_text()).encode()).hexdigest()


# --------------------------------------------------------------------------- when


def due(records: Sequence[TrialRecord], interval: int, max_trials: int | None) -> bool:
    """Whether the next trial must be a canary. The caller has checked that the baseline is complete."""
    if interval <= 0:
        return False
    last = next((i for i in range(len(records) - 1, -1, -1) if records[i].kind == "canary"), None)
    if last is None:
        return True  # right after the baseline (or on the first start with canaries on)
    if not _passed(records[last]):
        return True  # the last canary failed: nothing goes on until one is rejected again
    since = sum(1 for r in records[last + 1 :] if r.kind == "candidate")
    if since >= interval:
        return True
    candidates = sum(1 for r in records if r.kind == "candidate")
    return max_trials is not None and since > 0 and candidates >= max_trials


def banner(interval: int) -> list[str]:
    if interval > 0:
        return [
            f"canary: a known cheat runs after the baseline and every {interval} candidate trials; "
            f"it must come back {EXPECTED}, or the run stops"
        ]
    logger.warning("the run canary is OFF: nothing checks during this run that the isolation still holds")
    return [
        "WARNING: canary OFF (canary_interval = 0): nothing checks during this run that the sandbox "
        "and the evaluator still reject a known cheat"
    ]


# --------------------------------------------------------------------------- the trial


def write_plan(
    tp: TrialPaths, trial_id: str, seeds: tuple[int, int], *, worker: str, number: int
) -> TrialPlan:
    """Write the canary's trial folder (its train.py and trial.json) and return its plan."""
    text = source_text()
    tp.candidate.write_text(text, encoding="utf-8")
    plan = TrialPlan(
        trial_id=trial_id,
        kind="canary",
        parent_commit=None,
        candidate_commit=None,
        source_sha256=source_sha256(text),
        description=f"canary {number}: a known cheat (control); must come back {EXPECTED}",
        seeds=seeds,
        code_lines=code_lines(text),
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        worker=worker,
    )
    atomic_write(tp.trial_json, plan.model_dump_json(indent=2) + "\n")
    logger.info("%s: canary %d", trial_id, number)
    return plan


def number_of_next(records: Sequence[TrialRecord]) -> int:
    return 1 + sum(1 for r in records if r.kind == "canary")


def got(verdict: Verdict) -> str:
    """What came back, in the same words as EXPECTED."""
    check = verdict.report.check if verdict.report else None
    if verdict.status is Status.OK:
        return f"ok (val_bpb {verdict.val_bpb:.6f})" if verdict.val_bpb is not None else "ok"
    if verdict.status is Status.REJECTED:
        return f"rejected by {check}" if check is not None else f"rejected ({verdict.reason})"
    return f"{verdict.status.value} ({verdict.reason})"


def passed(verdict: Verdict) -> bool:
    return (
        verdict.status is EXPECTED_STATUS
        and verdict.report is not None
        and verdict.report.check == EXPECTED_CHECK
    )


def escapes(trial_dir: Path) -> list[str]:
    """The breakouts the canary reported succeeding (its `CANARY {json}` line in the TRAIN log)."""
    try:
        lines = (trial_dir / C.TRAIN_LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for line in reversed(lines):
        if line.startswith(MARKER):
            try:
                seen: Any = json.loads(line[len(MARKER) :]).get("seen", {})
            except (json.JSONDecodeError, AttributeError):
                return ["(unreadable canary report)"]
            if not isinstance(seen, dict):
                return []
            return [f"{k}: {', '.join(map(str, v))[:300]}" for k, v in sorted(seen.items()) if v]
    return []


def check(verdict: Verdict, trial_dir: Path, source: Path) -> CanaryCheck:
    """The `canary` field of the row."""
    return CanaryCheck(
        passed=passed(verdict),
        expected=EXPECTED,
        got=got(verdict),
        escapes=escapes(trial_dir),
        source_sha256=source_sha256(source.read_text(encoding="utf-8")),
    )


@dataclass(frozen=True)
class CanaryOutcome:
    """What a canary's row says: the verdict's status and score, and why it passed or failed. A canary
    is never judged: its decision is always `canary`."""

    status: Status
    reason: str
    val_bpb: float | None = None
    decision: Decision = Decision.CANARY


def decide(verdict: Verdict) -> CanaryOutcome:
    """The outcome of a canary row: never judged."""
    if passed(verdict):
        reason = f"canary passed: {got(verdict)}, as it must be ({verdict.reason})"
    else:
        reason = f"CANARY FAILED: expected {EXPECTED}, got {got(verdict)}: the isolation or the evaluator is broken"
    return CanaryOutcome(verdict.status, reason, verdict.val_bpb)


# --------------------------------------------------------------------------- when it fails


def _passed(record: TrialRecord) -> bool:
    return record.kind == "canary" and record.canary is not None and record.canary.passed


def suspect_since(records: Sequence[TrialRecord], failed: TrialRecord) -> tuple[str | None, list[str]]:
    """The last canary that passed before `failed`, and the trials recorded between the two."""
    index = next(i for i, r in enumerate(records) if r.trial_id == failed.trial_id)
    last_good = next((i for i in range(index - 1, -1, -1) if _passed(records[i])), None)
    start = 0 if last_good is None else last_good + 1
    between = [r.trial_id for r in records[start:index] if r.kind != "canary"]
    return (records[last_good].trial_id if last_good is not None else None), between


def alarm(failed: TrialRecord, records: Sequence[TrialRecord], run_dir: Path) -> str:
    """The message the run stops with."""
    assert failed.canary is not None
    good, between = suspect_since(records, failed)
    since = (
        f"the last canary that was rejected ({good})"
        if good
        else "the start of the run (no canary passed yet)"
    )
    span = (
        f"{len(between)} trial(s) recorded since {since} are SUSPECT: {between[0]} .. {between[-1]}"
        if between
        else f"no trial was recorded since {since}"
    )
    lines = [
        f"ISOLATION BROKEN: the run canary {failed.trial_id}, a known cheat that must come back "
        f"{failed.canary.expected}, came back {failed.canary.got}.",
        "The sandbox's isolation or the evaluator's probes are broken: a candidate could cheat and score.",
        f"The ledger's numbers are in doubt: {span}.",
    ]
    if failed.canary.escapes:
        lines.append("What the canary reported reaching: " + "; ".join(failed.canary.escapes))
    lines += [
        "The run has stopped. It goes on only after a canary is rejected again (the next `run` starts with one).",
        f"Inspect: python -m harness logs {failed.trial_id} --run-dir {run_dir}; "
        "check the isolation: python -m harness preflight",
    ]
    return "\n".join(lines)
