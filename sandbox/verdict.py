"""What goes into a trial and what comes out of it, plus the sandbox's error hierarchy.

Statuses are values, infrastructure failures are exceptions: `classify` turns what the engine saw of
the TRAIN container, and the evaluator's report, into exactly one `Status`; anything that is not the
candidate's doing (engine down, image missing, evaluator unable to start) is a `SandboxError` and
never becomes a verdict. Both backends share `classify`, so they cannot disagree on what a given
outcome means. `classify_starved` comes first: a TRAIN the host denied its compute (sandbox/compute.py)
is `starved`, a status about the host that the loop re-runs and never judges.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sandbox.compute import ComputeReport
from sandbox.constants import EVALUATOR_ERROR_EXIT, ExitCode, Status
from sandbox.engine.limits import Limits
from sandbox.report import EvalReport

# --------------------------------------------------------------------------- errors


class SandboxError(Exception):
    """The sandbox could not run the trial. Never the candidate's fault; never written as a verdict."""


class EngineUnavailable(SandboxError):
    """The container engine cannot be reached."""


class ImageMissing(SandboxError):
    """A required image is not built."""


class DataMissing(SandboxError):
    """The profile's data folder is not prepared (`make data`)."""


class EvaluatorFailed(SandboxError):
    """The trusted evaluator could not run (its own error, exit code 2), not a judgement on the artifact."""


class TrialCancelled(SandboxError):
    """The caller's cancel event was set: the trial was stopped and cleaned up; nothing was decided."""


def exit_code_for(exc: BaseException) -> ExitCode:
    """The command-line exit code for an infrastructure failure: the step to fix next, else ERROR."""
    for kind, code in (
        (EngineUnavailable, ExitCode.ENGINE),
        (ImageMissing, ExitCode.IMAGE),
        (DataMissing, ExitCode.DATA),
        (EvaluatorFailed, ExitCode.EVALUATOR),
    ):
        if isinstance(exc, kind):
            return code
    return ExitCode.ERROR


# --------------------------------------------------------------------------- models


class TrialSpec(BaseModel):
    """One candidate to run: everything the backend needs, nothing it may guess."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trial_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    candidate: Path
    trial_dir: Path
    profile: str = Field(pattern=r"^(tiny|gpu)$")
    limits: Limits
    seed: int = 0
    gpu_ids: tuple[str, ...] = ()
    # Below this share of its compute (sandbox/compute.py) TRAIN counts as starved; 0 turns it off.
    min_compute_share: float = Field(default=0.85, ge=0, le=1)


class TrainOutcome(BaseModel):
    """What the controller observed of the TRAIN container, engine-neutral."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None  # None: never exited on its own (killed by the controller)
    oom_killed: bool = False
    sigterm_sent: bool = False  # the budget ran out and the controller sent SIGTERM
    sigkilled: bool = False  # the grace ran out too and the controller sent SIGKILL
    output_full: bool = False  # the output channel reached its cap
    artifact_present: bool = False
    wall_s: float = 0.0


class EvalOutcome(BaseModel):
    """What the controller observed of the EVAL step, engine-neutral."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None  # None: killed by the controller at the eval time limit
    oom_killed: bool = False
    timed_out: bool = False
    report: EvalReport | None = None  # the validated report, when one was written and well-formed
    report_error: str = ""  # why a report that was expected could not be read
    wall_s: float = 0.0


class NodeInfo(BaseModel):
    """Where a trial ran when it was dispatched to a cluster node (sandbox/cluster/): the controller
    fills it from what that node's setup verified, never from what the trial's return claims."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str  # the cluster's id of the node (Ray's hex node id)
    node_name: str  # a readable name (Ray's node name: its address, or `ray start --node-name`)
    hardware_class: str  # "cpu:<model name>" or "gpu:<device name>": trials compare only within one
    dispatch_id: str = ""  # the dispatch journal's id of the accepted dispatch


class Verdict(BaseModel):
    """The result of one trial. `val_bpb` is set only when `status` is ok, and only from the evaluator."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    status: Status
    val_bpb: float | None = None
    reason: str = ""
    claimed_val_bpb: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    peak_memory_gb: float | None = None
    images: dict[str, str] = Field(default_factory=dict)
    logs: dict[str, str] = Field(default_factory=dict)
    report: EvalReport | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    gpu_ids: list[str] = Field(default_factory=list)
    seed: int = 0
    backend: str = ""
    compute_share: float | None = None  # of TRAIN (sandbox/compute.py); None: not measured
    compute: dict[str, Any] | None = None  # the evidence: cpu, wait, denied, throttled seconds, how
    node: NodeInfo | None = None  # set only for a trial run on a cluster node


# --------------------------------------------------------------------------- classification

SIGXFSZ_EXIT = 128 + 25  # a write past RLIMIT_FSIZE kills the writer with SIGXFSZ
SIGTERM_EXIT = 128 + 15  # the default action of the controller's SIGTERM (docker-init forwards it)


def classify_train(outcome: TrainOutcome) -> tuple[Status, str] | None:
    """The TRAIN container's own verdict, or None when its artifact should go to the evaluator."""
    if outcome.oom_killed:
        return Status.OOM, "TRAIN exceeded its memory limit (the engine reported OOMKilled)"
    if outcome.output_full or outcome.exit_code == SIGXFSZ_EXIT:
        return Status.OUTPUT_LIMIT, "TRAIN filled its output channel to the cap"
    if outcome.sigkilled:
        return Status.TIMEOUT, "TRAIN was still running a grace after the budget's SIGTERM and was killed"
    if outcome.sigterm_sent and outcome.exit_code == SIGTERM_EXIT:
        return Status.TIMEOUT, "TRAIN ran past the time budget and died of the controller's SIGTERM"
    if outcome.exit_code != 0:
        after = " after SIGTERM" if outcome.sigterm_sent else ""
        return Status.CRASH, f"train.py exited with code {outcome.exit_code}{after}"
    if not outcome.artifact_present:
        return Status.CRASH, "train.py exited 0 but wrote no model.pt2"
    return None


def classify_starved(compute: ComputeReport | None, min_share: float) -> tuple[Status, str] | None:
    """STARVED when TRAIN got less than `min_share` of its compute, whatever else happened to it.

    It comes before every other classification: a timeout or a poor score under starvation was
    decided by the host, not by the candidate, so the trial is run again rather than judged.
    """
    if compute is None or not compute.starved(min_share):
        return None
    return Status.STARVED, (
        f"the host starved TRAIN: {compute.summary()}, below the minimum {min_share:.2f}; "
        "not the candidate's result (run again on a quieter host)"
    )


def classify_report(report: EvalReport) -> tuple[Status, float | None, str]:
    """The verdict of a (validated) report; an ok report without a usable score is a rejection."""
    if report.status == Status.OK.value:
        val = report.val_bpb
        if val is not None and math.isfinite(val) and val > 0:
            return Status.OK, val, report.reason
        return Status.REJECTED, None, f"evaluator report has status ok but an invalid val_bpb: {val!r}"
    return Status.REJECTED, None, report.reason or "rejected by the evaluator"


def classify_eval(outcome: EvalOutcome) -> tuple[Status, float | None, str]:
    """The verdict on an artifact from the EVAL step; raises `EvaluatorFailed` when it is the evaluator's fault.

    An artifact that makes the evaluator run out of memory or time, or die without a report, is
    rejected: the evaluator is trusted, so what breaks it is the artifact. Exit code 2 is the
    evaluator reporting its own failure, and exit 0 without a readable report breaks its contract:
    both are infrastructure.
    """
    if outcome.oom_killed:
        return Status.REJECTED, None, "evaluating the artifact exceeded the evaluator's memory limit"
    if outcome.timed_out:
        return (
            Status.REJECTED,
            None,
            f"evaluating the artifact ran past the time limit ({outcome.wall_s:.0f} s)",
        )
    if outcome.exit_code == EVALUATOR_ERROR_EXIT:
        raise EvaluatorFailed(
            f"the evaluator failed on its own (exit code 2); see its log. {outcome.report_error}"
        )
    if outcome.exit_code == 0:
        if outcome.report is None:
            raise EvaluatorFailed(f"the evaluator exited 0 without a readable report: {outcome.report_error}")
        return classify_report(outcome.report)
    return Status.REJECTED, None, f"the evaluator died with exit code {outcome.exit_code} on this artifact"


_CLAIM = re.compile(r"^\s*val_bpb\s*[:=]\s*([-+0-9.eEinfaINFA]+)\s*$", re.MULTILINE)


def claimed_val_bpb(log_text: str) -> float | None:
    """The last val_bpb the candidate printed, kept for the audit only: it never decides anything."""
    matches = _CLAIM.findall(log_text)
    if not matches:
        return None
    try:
        return float(matches[-1])
    except ValueError:
        return None
