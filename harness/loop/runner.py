"""One trial, start to finish, for the worker whose `Seat` is passed in: plan it (from the scheduler's
step: a baseline run, the canary, or the agent's proposal), run it in the sandbox (a would-be keep is
confirmed on paired runs of it and the current best, harness/judge.py), judge and record it.

Failures that are nobody's verdict are exceptions, retried a bounded number of times, and never
written to the ledger: SandboxError (backoff, then `SandboxGaveUp`; DataMissing and ImageMissing are
not retried, a retry cannot fix them), AgentError (planning.py). A run the host starved of compute
(status `starved`) is not a result: it is moved to the trial's `starved/<n>/`, the worker waits
(`retries.starved_backoff_s`, doubling) and runs it again; `retries.starved_attempts` in a row pause
the run (`HostStarved`; a paused start does not count towards `trial_starts`).

Cancellation: the run's cancel event goes to every `Sandbox.run_trial` and `Agent.propose` call, and
every wait is a wait on it. A cancelled trial raises `Cancelled` before its records are written; it
keeps its folder and `trial.json`, so the next `run` re-runs it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

from harness import canary
from harness.config import TrialPaths
from harness.judge import Action, Judgement, judge
from harness.loop.common import (
    CONFIRM_SUFFIX,
    RUN_FOLDER,
    STARVED_BACKOFF_MAX_S,
    derive_seed,
    file_log,
    now_iso,
)
from harness.loop.context import RunContext
from harness.loop.errors import BaselineFailed, Cancelled, HostStarved, IsolationBroken, SandboxGaveUp
from harness.loop.outcomes import RunRole, Seat
from harness.loop.planning import plan_baseline, plan_canary, plan_candidate
from harness.loop.recording import record
from harness.loop.scheduler import Baseline, Canary, Candidate, Rerun, Step
from harness.loop.startup import count_starts
from harness.records.schemas import TrialPlan, TrialRecord
from sandbox import constants as C
from sandbox.constants import Decision, Status
from sandbox.incontainer.fileio import atomic_write as write_atomic
from sandbox.verdict import DataMissing, ImageMissing, SandboxError, TrialCancelled, TrialSpec, Verdict

logger = logging.getLogger(__name__)


def plan_for(ctx: RunContext, seat: Seat, step: Step) -> TrialPlan:
    """The trial plan for a scheduler step (a candidate's asks the seat's agent)."""
    if isinstance(step, Rerun):
        return step.plan
    records = ctx.ledger.records()
    if isinstance(step, Baseline):
        return plan_baseline(ctx, seat, records, step.number)
    if isinstance(step, Canary):
        return plan_canary(ctx, seat, records, step.number)
    if isinstance(step, Candidate):
        return plan_candidate(ctx, seat, records, ctx.state(records), step.index)
    raise TypeError(f"no trial to plan for {step!r}")


def execute(ctx: RunContext, seat: Seat, plan: TrialPlan) -> TrialRecord:
    """Run, judge and record `plan` in `seat`; raises what stops the run (a failed canary or baseline)."""
    tp = ctx.paths.trial(plan.trial_id)
    starts = count_starts(tp)
    if starts or any(entry.name not in tp.own_files for entry in tp.dir.iterdir()):
        _set_aside(tp, starts)
    with tp.starts.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"at": now_iso(), "worker": seat.name}) + "\n")
    started_at = now_iso()
    with file_log(tp.controller_log, thread_only=True):
        logger.info("%s (%s): %s", plan.trial_id, plan.kind, plan.description)
        verdicts: list[Verdict] = []
        roles: list[RunRole] = []
        if plan.invalid is None:
            ctx.progress.phase(plan.trial_id, f"running ({plan.description})")
            verdicts.append(run_sandbox(ctx, seat, plan, 0))
            roles.append(RunRole())
            if plan.kind == "candidate" and verdicts[0].status is Status.OK:
                first = _first_judgement(ctx, plan, verdicts)
                if first.action is Action.CONFIRM:
                    logger.info("%s: %s", plan.trial_id, first.reason)
                    _confirm(ctx, seat, plan, verdicts, roles)
    written = record(ctx, seat, plan, verdicts, started_at, roles)
    if written.canary is not None and not written.canary.passed:
        raise IsolationBroken(canary.alarm(written, ctx.ledger.records(), ctx.paths.root))
    if plan.kind == "baseline" and written.decision is not Decision.BASELINE:
        raise BaselineFailed(
            f"the starting train.py failed its baseline run {plan.trial_id}: {written.status.value}: "
            f"{written.reason}. See `python -m harness logs {plan.trial_id} --run-dir {ctx.paths.root}`; "
            "fix train.py (or the data and images) and start a new run folder."
        )
    return written


def _set_aside(tp: TrialPaths, starts: int) -> None:
    """Move an interrupted attempt's sandbox output out of the way (kept, never deleted)."""
    aside = tp.interrupted_dir / str(starts)
    while aside.exists():  # a start paused by starvation does not count, so numbers can repeat
        starts += 1
        aside = tp.interrupted_dir / str(starts)
    aside.mkdir(parents=True)
    for entry in tp.dir.iterdir():
        if entry.name not in tp.own_files:
            shutil.move(str(entry), str(aside / entry.name))


def _first_judgement(ctx: RunContext, plan: TrialPlan, verdicts: list[Verdict]) -> Judgement:
    state = ctx.state(ctx.ledger.records())
    assert state.best is not None and state.noise is not None
    scores = [v.val_bpb for v in verdicts if v.val_bpb is not None]
    return judge(state.best, state.noise, scores, plan.code_lines, ctx.config.judge)


def _confirm(
    ctx: RunContext, seat: Seat, plan: TrialPlan, verdicts: list[Verdict], roles: list[RunRole]
) -> None:
    """The paired confirmation (harness/judge.py): `confirm_pairs` times, the candidate and the
    current best back to back with the same seed, in alternating order; stops at a failed run."""
    tp = ctx.paths.trial(plan.trial_id)
    state = ctx.state(ctx.ledger.records())
    assert state.best is not None
    best = state.best
    tp.paired_best.write_text(ctx.lineage.read(best.commit), encoding="utf-8")
    pairs = ctx.config.judge.confirm_pairs
    for pair in range(1, pairs + 1):
        seed = plan.seeds[1] if pair == 1 else derive_seed(ctx.config.seed, plan.trial_id, pair)
        order: tuple[Literal["candidate", "best"], ...] = (
            ("candidate", "best") if pair % 2 else ("best", "candidate")
        )
        for role in order:
            run = len(verdicts)
            label = f"the best {best.commit[:7]}" if role == "best" else "the candidate"
            ctx.progress.phase(plan.trial_id, f"confirming: pair {pair}/{pairs}, {label} (seed {seed})")
            verdict = run_sandbox(
                ctx,
                seat,
                plan,
                run,
                seed=seed,
                candidate=tp.paired_best if role == "best" else tp.candidate,
                sandbox_id=f"{plan.trial_id}-{'b' if role == 'best' else 'c'}{pair}",
            )
            verdicts.append(verdict)
            roles.append(RunRole(role, best.commit if role == "best" else None, pair))
            if verdict.status is not Status.OK:
                return  # not confirmed, whichever run failed


def run_sandbox(
    ctx: RunContext,
    seat: Seat,
    plan: TrialPlan,
    run: int,
    *,
    seed: int | None = None,
    candidate: Path | None = None,
    sandbox_id: str | None = None,
) -> Verdict:
    tp = ctx.paths.trial(plan.trial_id)
    spec = TrialSpec(
        trial_id=sandbox_id or (plan.trial_id if run == 0 else plan.trial_id + CONFIRM_SUFFIX),
        candidate=candidate or tp.candidate,
        trial_dir=tp.run_dir(run),
        profile=ctx.config.profile,
        limits=seat.limits,
        seed=plan.seeds[min(run, 1)] if seed is None else seed,
        gpu_ids=seat.gpu_ids,
        min_compute_share=ctx.config.judge.min_compute_share,
    )
    return _run_fed(ctx, seat, tp, spec)


def _run_fed(ctx: RunContext, seat: Seat, tp: TrialPaths, spec: TrialSpec) -> Verdict:
    """Run `spec` until a run is not starved: each starved run is set aside under starved/<n>/,
    followed by a wait (doubling), and `starved_attempts` of them in a row pause the run."""
    retries = ctx.config.retries
    for attempt in range(1, retries.starved_attempts + 1):
        verdict = _run_spec(ctx, spec)
        if verdict.status is not Status.STARVED:
            return verdict
        folder = _set_aside_starved(tp, spec.trial_dir)
        if attempt == retries.starved_attempts:
            with tp.starts.open("a", encoding="utf-8") as f:  # this start does not count (resumable)
                f.write(json.dumps({"at": now_iso(), "worker": seat.name, "paused": "starved"}) + "\n")
            raise HostStarved(
                f"the host starved {attempt} runs of {spec.trial_id} in a row (last: {verdict.reason}; "
                f"kept in {folder}). Nothing was judged; the run is paused. Stop what loads the host "
                f"(or lower judge.min_compute_share, now {spec.min_compute_share}) and run the same "
                "command again: the trial is re-run."
            )
        wait = min(retries.starved_backoff_s * 2 ** (attempt - 1), STARVED_BACKOFF_MAX_S)
        share = "?" if verdict.compute_share is None else f"{verdict.compute_share:.2f}"
        logger.warning(
            "%s starved (compute share %s < %.2f; attempt %d of %d): waiting %.0f s, then running it again",
            spec.trial_id,
            share,
            spec.min_compute_share,
            attempt,
            retries.starved_attempts,
            wait,
        )
        ctx.progress.phase(
            tp.dir.name,
            f"host busy: compute share {share} < {spec.min_compute_share:.2f}; "
            f"re-running in {wait:.0f} s (starved {attempt}/{retries.starved_attempts})",
        )
        ctx.pause(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _set_aside_starved(tp: TrialPaths, run_dir: Path) -> str:
    """Move a starved run's files to starved/<n>/ (kept, never judged); return that folder."""
    tp.starved_dir.mkdir(exist_ok=True)
    n = 1 + sum(1 for p in tp.starved_dir.iterdir() if p.is_dir())
    target = tp.starved_dir / str(n)
    target.mkdir()
    if run_dir == tp.dir:  # the first run writes into the trial folder itself, beside other runs
        for entry in tp.dir.iterdir():
            others = entry.name == tp.confirm_dir.name or RUN_FOLDER.match(entry.name)
            if entry.name not in tp.own_files and not others:
                shutil.move(str(entry), str(target / entry.name))
    else:
        for entry in run_dir.iterdir():
            shutil.move(str(entry), str(target / entry.name))
        run_dir.rmdir()
    return target.relative_to(tp.dir).as_posix()


def _run_spec(ctx: RunContext, spec: TrialSpec) -> Verdict:
    retries = ctx.config.retries
    name = ctx.sandbox.name
    for attempt in range(1, retries.sandbox_attempts + 1):
        ctx.check_cancelled()
        try:
            verdict = ctx.sandbox.run_trial(spec, ctx.cancel)
        except TrialCancelled as exc:
            raise Cancelled(f"{spec.trial_id} cancelled") from exc
        except (DataMissing, ImageMissing) as exc:
            raise SandboxGaveUp(f"{exc} (nothing was recorded against the candidate)") from exc
        except SandboxError as exc:
            if attempt == retries.sandbox_attempts:
                raise SandboxGaveUp(
                    f"the {name} sandbox failed {attempt} times running {spec.trial_id}: {exc}. "
                    "Nothing was recorded against the candidate; fix the sandbox and run the same "
                    "command again: the trial is re-run."
                ) from exc
            wait = retries.sandbox_backoff_s * 2 ** (attempt - 1)
            logger.warning(
                "sandbox error on %s (attempt %d, retrying in %.0fs): %s", spec.trial_id, attempt, wait, exc
            )
            ctx.pause(wait)
            continue
        ctx.check_cancelled()  # an engine that finished anyway: the trial was still cancelled, as a whole
        if not (spec.trial_dir / C.VERDICT_FILE).exists():
            write_atomic(spec.trial_dir / C.VERDICT_FILE, verdict.model_dump_json(indent=2) + "\n")
        return verdict
    raise AssertionError("unreachable")  # pragma: no cover
