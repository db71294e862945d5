"""One trial's path, written once: `run_trial(engine, spec, cancel) -> Verdict`.

Every backend runs this template; the engine (sandbox/engine/base.py) supplies only the mechanism.
In order: the trial folder and its step log, the data folder check, the candidate's copy, the audit
trail's `limits`, TRAIN, the starvation check, the TRAIN classification, EVAL (only for an artifact
worth judging), its classification, the engine's cleanup (always), then `verdict.json` (last).

Deliberate properties:
- Statuses are values, infrastructure failures exceptions: a `SandboxError` (a cancellation
  included) is recorded in the audit trail and raised, and no verdict.json is written.
- Starvation comes before everything else the trial showed: what the host denied is not the
  candidate's result, so its artifact is not evaluated.
- Cleanup runs in `finally`, before the verdict is written: a verdict on disk means the engine is clean.
"""

from __future__ import annotations

import logging
import threading
import time

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine import audit, trialdir
from sandbox.engine.base import Engine, EngineTrial, StagedTrial, TrainResult, raise_if_cancelled
from sandbox.report import EvalReport
from sandbox.verdict import SandboxError, TrialSpec, Verdict, classify_eval, classify_starved, classify_train

logger = logging.getLogger(__name__)


def run_trial(engine: Engine, spec: TrialSpec, cancel: threading.Event | None = None) -> Verdict:
    """Run `spec` on `engine` and return its verdict; raises `SandboxError` (`TrialCancelled` on `cancel`)."""
    started = time.monotonic()
    cancel = cancel if cancel is not None else threading.Event()
    trial_dir = spec.trial_dir.resolve()
    trial_dir.mkdir(parents=True, exist_ok=True)
    with trialdir.trial_log(trial_dir / C.SANDBOX_LOG_FILE):
        data_dir = trialdir.resolve_data_dir(engine.data_dir, spec.profile)
        candidate = trialdir.stage_candidate(spec.candidate, trial_dir)
        images = dict(engine.images)
        trail = audit.AuditTrail(trial_dir, spec.trial_id)
        trail.start(spec, backend=engine.name, images=images)
        logger.info(
            "trial %s on %s: images %s, data %s, limits %s",
            spec.trial_id,
            engine.name,
            images,
            data_dir,
            spec.limits,
        )
        trial = engine.open(StagedTrial(spec, trial_dir, data_dir, candidate, started))
        try:
            status, val_bpb, reason, train, report = _steps(trial, spec, trail, cancel)
        except SandboxError as exc:
            logger.error("trial %s: sandbox failure: %s", spec.trial_id, exc)
            trail.infrastructure_error(exc)
            raise
        finally:
            teardown_start = time.monotonic()
            trial.cleanup()
            trial.timings["teardown_s"] = time.monotonic() - teardown_start
        trial.timings["total_s"] = time.monotonic() - started
        verdict = trialdir.finish(
            spec,
            backend=engine.name,
            status=status,
            val_bpb=val_bpb,
            reason=reason,
            train_log=train.log,
            timings=trial.timings,
            peak_memory_bytes=train.peak_memory_bytes,
            images=images,
            logs=trial.logs,
            report=report,
            compute=train.compute,
        )
        trail.verdict(verdict)
        return verdict


def _steps(
    trial: EngineTrial, spec: TrialSpec, trail: audit.AuditTrail, cancel: threading.Event
) -> tuple[Status, float | None, str, TrainResult, EvalReport | None]:
    """TRAIN, then EVAL when TRAIN left an artifact worth judging; the status, score and reason."""
    raise_if_cancelled(cancel, "set-up")
    train = trial.train(cancel)
    logger.info("TRAIN outcome: %s", train.outcome)
    if train.compute is not None:
        logger.info("TRAIN %s", train.compute.summary())
    trail.train(train.outcome, spec.limits, signals=train.signals, name=train.name)
    early = classify_starved(train.compute, spec.min_compute_share) or classify_train(train.outcome)
    if early is not None:
        return early[0], None, early[1], train, None
    raise_if_cancelled(cancel, "the hand-over to EVAL")
    ev = trial.evaluate(cancel)
    trail.eval(ev.outcome, spec.limits, signals=ev.signals, name=ev.name)
    status, val_bpb, reason = classify_eval(ev.outcome)
    return status, val_bpb, reason, train, ev.outcome.report
