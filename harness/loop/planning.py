"""Turning a scheduler step into a trial plan: a trial id, the trial folder, and (for a candidate) the
agent's proposal, validated and committed to the lineage.

The agent as a researcher: its notes (`Proposal.notes`) are stored as notes/<trial_id>.md with their
hash in that trial's row, and the newest recorded version goes into every later context (so they
survive a resume); `view_trial` looks up recorded trials (never a path, nothing of the evaluator's
report beyond the verdict); the history is the whole run with each score's delta to the baseline.
A proposal that does not parse or changes nothing is still planned (`TrialPlan.invalid`): the
runner records it without running it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Sequence

from harness import canary
from harness.agents.base import (
    AgentCancelled,
    AgentCapReached,
    AgentContext,
    AgentError,
    AgentExhausted,
    AgentFatal,
    HistoryRow,
    LastTrial,
    Proposal,
    TrialLookup,
    Usage,
)
from harness.judge import JudgeState, code_lines
from harness.loop.common import (
    TRIAL_FOLDER,
    TRIAL_ID,
    add_usage,
    derive_seed,
    now_iso,
    read_tail,
    unified_diff,
    validate_proposal,
)
from harness.loop.context import RunContext
from harness.loop.errors import AgentGaveUp, Cancelled, CapReached, StopRun
from harness.loop.evolution import program_in_use
from harness.loop.outcomes import Seat
from harness.records.results import sanitize_description
from harness.records.schemas import AgentRecord, TrialPlan, TrialRecord
from sandbox import constants as C
from sandbox.incontainer.fileio import atomic_write as write_atomic

logger = logging.getLogger(__name__)


def allocate(ctx: RunContext, records: Sequence[TrialRecord]) -> str:
    """The next trial id, claimed with an atomic mkdir (several workers never get the same one)."""
    ctx.paths.trials.mkdir(parents=True, exist_ok=True)
    used = [int(m.group(1)) for m in (TRIAL_FOLDER.match(p.name) for p in ctx.paths.trials.iterdir()) if m]
    used += [int(m.group(1)) for m in (TRIAL_ID.match(r.trial_id) for r in records) if m]
    n = max(used, default=-1) + 1
    while True:
        trial_id = f"t{n:04d}"
        try:
            (ctx.paths.trials / trial_id).mkdir()
            return trial_id
        except FileExistsError:
            n += 1


def seeds(ctx: RunContext, trial_id: str) -> tuple[int, int]:
    return derive_seed(ctx.config.seed, trial_id, 0), derive_seed(ctx.config.seed, trial_id, 1)


def plan_baseline(ctx: RunContext, seat: Seat, records: Sequence[TrialRecord], number: int) -> TrialPlan:
    """Baseline run `number` (1-based, the ones recorded or running counted) of the starting train.py."""
    root = ctx.lineage.root()
    text = ctx.lineage.read(root)
    trial_id = allocate(ctx, records)
    tp = ctx.paths.trial(trial_id)
    tp.candidate.write_text(text, encoding="utf-8")
    pair = seeds(ctx, trial_id)
    plan = TrialPlan(
        trial_id=trial_id,
        kind="baseline",
        parent_commit=None,
        candidate_commit=root,
        description=f"baseline {number}/{ctx.config.judge.baseline_repeats} (seed {pair[0]})",
        seeds=pair,
        code_lines=code_lines(text),
        created_at=now_iso(),
        worker=seat.name,
    )
    write_atomic(tp.trial_json, plan.model_dump_json(indent=2) + "\n")
    return plan


def plan_canary(ctx: RunContext, seat: Seat, records: Sequence[TrialRecord], number: int) -> TrialPlan:
    """The run canary's trial (harness/canary.py)."""
    trial_id = allocate(ctx, records)
    return canary.write_plan(
        ctx.paths.trial(trial_id), trial_id, seeds(ctx, trial_id), worker=seat.name, number=number
    )


def plan_candidate(
    ctx: RunContext, seat: Seat, records: Sequence[TrialRecord], state: JudgeState, index: int
) -> TrialPlan:
    """Candidate number `index` of the run (the ones in flight counted): proposed from the best now."""
    assert state.best is not None  # the scheduler plans candidates only once the baseline is complete
    parent = state.best.commit
    parent_text = ctx.lineage.read(parent)
    history = history_of(records, state)
    notes = current_notes(ctx, records)
    view = functools.partial(lookup, ctx)
    program = program_in_use(ctx, seat, records, state, history, notes, view)
    context = AgentContext(
        program=program,
        notes=notes,
        train_py=parent_text,
        best_val_bpb=state.best.val_bpb,
        history=history,
        last=next((last_trial(ctx, r) for r in reversed(records) if r.kind != "canary"), None),
        profile=ctx.config.profile,
        trial_index=index,
        seed=derive_seed(ctx.config.seed, "agent", index),
        view_trial=view,
    )
    ctx.progress.phase(f"#{index}", f"asking the {seat.agent.name} agent for a proposal{ctx.cost_note()}")
    proposal, agent_record = propose(ctx, seat, context)
    text = proposal.train_py
    invalid = validate_proposal(text, parent_text)
    description = sanitize_description(proposal.description) or "(no description)"
    trial_id = allocate(ctx, records)
    notes_sha256 = store_notes(ctx, trial_id, proposal.notes, notes)
    tp = ctx.paths.trial(trial_id)
    tp.candidate.write_text(text, encoding="utf-8")
    tp.diff.write_text(
        unified_diff(parent_text, text, parent_label=parent[:12], candidate_label=trial_id),
        encoding="utf-8",
    )
    with ctx.ledger.locked():  # every lineage write happens under the ledger lock
        commit = ctx.lineage.commit_candidate(text, parent=parent, trial_id=trial_id, description=description)
    plan = TrialPlan(
        trial_id=trial_id,
        kind="candidate",
        parent_commit=parent,
        candidate_commit=commit,
        description=description,
        seeds=seeds(ctx, trial_id),
        code_lines=code_lines(text),
        invalid=invalid,
        agent=agent_record,
        notes_sha256=notes_sha256,
        created_at=now_iso(),
        worker=seat.name,
    )
    write_atomic(tp.trial_json, plan.model_dump_json(indent=2) + "\n")
    return plan


def propose(ctx: RunContext, seat: Seat, context: AgentContext) -> tuple[Proposal, AgentRecord]:
    """The agent's proposal, retried with backoff; every way it fails is a stop or a recorded cost."""
    retries = ctx.config.retries
    failed = Usage()
    agent = seat.agent
    for attempt in range(1, retries.agent_attempts + 1):
        ctx.check_cancelled()
        started = time.monotonic()
        try:
            proposal = agent.propose(context, ctx.cancel)
        except AgentExhausted as exc:
            raise StopRun(f"the agent has nothing left to propose ({exc})") from exc
        except AgentCancelled as exc:
            ctx.record_spend(
                seat, add_usage(failed, exc.usage or Usage()), f"proposal #{context.trial_index}: {exc}"
            )
            raise Cancelled(f"proposal #{context.trial_index} cancelled") from exc
        except AgentCapReached as exc:
            ctx.record_spend(
                seat, add_usage(failed, exc.usage or Usage()), f"proposal #{context.trial_index}: {exc}"
            )
            raise CapReached(
                f"{exc}. Nothing was recorded for this proposal but its cost; raise the cap and run the "
                "same command to continue.",
                cap=exc.cap,
            ) from exc
        except AgentFatal as exc:
            ctx.record_spend(
                seat, add_usage(failed, exc.usage or Usage()), f"proposal #{context.trial_index}: {exc}"
            )
            raise AgentGaveUp(f"the {agent.name} agent cannot work as configured: {exc}") from exc
        except AgentError as exc:
            if exc.usage is not None:
                failed = add_usage(failed, exc.usage)
            if attempt == retries.agent_attempts:
                ctx.record_spend(seat, failed, f"proposal #{context.trial_index}: gave up: {exc}")
                raise AgentGaveUp(
                    f"the {agent.name} agent failed {attempt} times in a row; last error: {exc}. "
                    "Nothing was recorded for these attempts; run the same command again to resume."
                ) from exc
            wait = retries.agent_backoff_s * 2 ** (attempt - 1)
            logger.warning("agent error (attempt %d, retrying in %.0fs): %s", attempt, wait, exc)
            ctx.pause(wait)
            continue
        record = AgentRecord(
            name=agent.name,
            model=proposal.usage.model,
            usage=add_usage(proposal.usage, failed),
            propose_s=round(time.monotonic() - started, 3),
        )
        return proposal, record
    raise AssertionError("unreachable")  # pragma: no cover


def history_of(records: Sequence[TrialRecord], state: JudgeState) -> tuple[HistoryRow, ...]:
    """The whole run, compact (the agent caps what it shows); canaries are the controller's business."""
    base = state.noise.mean if state.noise is not None else None
    return tuple(
        HistoryRow(
            trial_id=r.trial_id,
            status=r.status.value,
            decision=r.decision.value,
            val_bpb=r.val_bpb,
            description=r.description,
            delta=r.val_bpb - base if r.val_bpb is not None and base is not None else None,
        )
        for r in records
        if r.kind != "canary"
    )


def current_notes(ctx: RunContext, records: Sequence[TrialRecord]) -> str:
    """The newest notes a recorded trial's proposal wrote ("" if none did)."""
    for r in reversed(records):
        if r.notes_sha256 is None:
            continue
        path = ctx.paths.notes / f"{r.trial_id}.md"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            logger.warning(
                "the notes written for %s are missing (%s); the agent starts without", r.trial_id, exc
            )
            return ""
        if hashlib.sha256(text.encode()).hexdigest() != r.notes_sha256:
            logger.warning("%s does not match the hash in %s's ledger row: it was edited", path, r.trial_id)
        return text
    return ""


def store_notes(ctx: RunContext, trial_id: str, new: str | None, current: str) -> str | None:
    """Write a new version of the notes as notes/<trial_id>.md; its sha256, or None if unchanged."""
    if new is None or new == current:
        return None
    ctx.paths.notes.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.paths.notes / f"{trial_id}.md", new)
    return hashlib.sha256(new.encode()).hexdigest()


def lookup(ctx: RunContext, trial_id: str) -> TrialLookup | None:
    """`view_trial`: a recorded baseline or candidate trial by id; None for anything else."""
    if not TRIAL_ID.match(trial_id):
        return None
    records = ctx.ledger.records()
    found = next((r for r in records if r.trial_id == trial_id and r.kind != "canary"), None)
    if found is None:
        return None
    tp = ctx.paths.trial(trial_id)
    diff = ""
    if found.kind == "candidate" and tp.diff.is_file():
        diff = tp.diff.read_text(encoding="utf-8", errors="replace")
    parent = next(
        (r.trial_id for r in records if r.candidate_commit == found.parent_commit and r.kind != "canary"),
        (found.parent_commit or "")[:12],
    )
    last = last_trial(ctx, found)
    return TrialLookup(
        trial_id=found.trial_id,
        kind=found.kind,
        status=last.status,
        decision=last.decision,
        val_bpb=found.val_bpb,
        description=found.description,
        reason=found.reason,
        parent=parent,
        diff=diff,
        log_tail=last.log_tail,
    )


def last_trial(ctx: RunContext, record: TrialRecord) -> LastTrial:
    tail = ""
    if record.runs:
        run = record.runs[-1]
        tail = read_tail(ctx.paths.trial(record.trial_id).dir / run.folder / C.TRAIN_LOG_FILE)
    return LastTrial(
        trial_id=record.trial_id,
        status=record.status.value,
        decision=record.decision.value,
        val_bpb=record.val_bpb,
        reason=record.reason,
        log_tail=tail,
    )
