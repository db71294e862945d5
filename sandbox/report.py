"""The evaluator's report as the controller reads it: `EvalReport`, validated where report.json is read.

The evaluator (sandbox/incontainer/evaluate.py) writes the report as plain JSON with the standard
library, so the trainer image needs nothing of this module; the controller validates it on read with
`parse_report`. Deliberate:
- Strict and closed (`strict=True`, `extra="forbid"`): a key the controller does not know, a wrong
  type or a status other than ok/rejected is a malformed report. `parse_report` returns it as
  (None, why), the same value as a report that is not JSON, so `classify_eval` turns it into the same
  `EvaluatorFailed` (infrastructure, never a verdict on the artifact) instead of guessing.
- Whether an ok report's score is usable (finite, positive) stays with `classify_report`: that is a
  rejection of the artifact, not a malformed message.
- Every field but `status` has a default, so a report cut down to what a test needs still validates.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)


class ProbeOutcome(BaseModel):
    """One behavioural check of sandbox/incontainer/probes.py."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    passed: bool
    detail: str = ""


class EvalReport(BaseModel):
    """report.json: what the evaluator decided about one artifact, and what pins that decision."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    status: Literal["ok", "rejected"]
    reason: str = ""
    check: str | None = None  # artifact:<check>, probe:<name>, runtime:<kind>, internal:<type>; None: scored
    val_bpb: float | None = None
    tokens_scored: int | None = None
    bytes_scored: int | None = None
    unigram_bpb: float | None = None  # the data's unigram baseline, scored like the artifact
    probes: dict[str, ProbeOutcome] = Field(default_factory=dict)
    probe_plan: dict[str, Any] | None = None  # the secret plan, revealed once the checks have run
    probe_deviation_nats: dict[str, float | None] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    artifact_sha256: str | None = None
    artifact_bytes: int | None = None
    param_count: int | None = None
    ops: dict[str, int] = Field(default_factory=dict)  # operator -> call sites
    float_dtypes: list[str] = Field(default_factory=list)
    functionalized: bool | None = None
    profile: str = ""
    device: str = ""
    torch_version: str = ""
    eval_rows: int | None = None
    hashes: dict[str, str] = Field(default_factory=dict)  # prepare.py, the evaluator's sources, the data


def parse_report(raw: bytes) -> tuple[EvalReport | None, str]:
    """The report in `raw`, or None and why it is unusable (not JSON, not an object, not the schema)."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return None, f"the report is not valid JSON: {exc}"
    if not isinstance(obj, dict):
        return None, "the report is not a JSON object"
    try:
        return EvalReport.model_validate(obj), ""
    except ValidationError as exc:
        why = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(report)'}: {e['msg']}" for e in exc.errors()[:10]
        )
        logger.warning("malformed evaluator report: %s", why)
        return None, f"the report does not match the evaluator's schema ({exc.error_count()} errors: {why})"
