"""program.md for the next proposal: the human's, re-read before each proposal (they may edit it during
the night), with the evolved research guidance when program evolution is on (harness/program.py).

An evolution step runs just before a candidate is planned when it is due; it changes only the
guidance section (checked), is stored as programs/<id>.md with its diff, committed on the program
chain of the lineage, and recorded as a `program` ledger row, all under the ledger lock.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from harness import program as programs
from harness.agents.base import (
    AgentCancelled,
    AgentCapReached,
    AgentError,
    AgentFatal,
    HistoryRow,
    ProgramContext,
    ProgramEditor,
    TrialLookup,
    Usage,
)
from harness.judge import JudgeState
from harness.loop.common import now_iso, read_program
from harness.loop.context import RunContext
from harness.loop.errors import AgentGaveUp, Cancelled, CapReached, LoopError, ProgramMissing
from harness.loop.outcomes import Seat
from harness.loop.scheduler import check_cost
from harness.records.schemas import AgentRecord, ProgramRecord, TrialRecord
from sandbox.incontainer.fileio import atomic_write as write_atomic
from sandbox.incontainer.fileio import sha256_file

logger = logging.getLogger(__name__)


def program_in_use(
    ctx: RunContext,
    seat: Seat,
    records: Sequence[TrialRecord],
    state: JudgeState,
    history: tuple[HistoryRow, ...],
    notes: str,
    view: Callable[[str], TrialLookup | None],
) -> str:
    """program.md for the next proposal: the human's, with the evolved guidance when evolution is on
    (after an evolution step, if one is due now)."""
    human = current_program(ctx)
    every = ctx.config.program_evolution_every
    if every <= 0:
        return human  # pinned: the human's program.md as written
    steps = ctx.ledger.programs()
    current = evolved(ctx, human, steps)
    candidates = sum(1 for r in records if r.kind == "candidate")
    if not programs.due(candidates, every, steps[-1].after_candidates if steps else None):
        return current
    if not isinstance(seat.agent, ProgramEditor):
        if "editor" not in ctx.warned:
            logger.warning("program evolution is on but the %s agent cannot edit program.md", seat.agent.name)
            ctx.warned.add("editor")
        return current
    guidance = programs.guidance_of(current)
    if guidance is None:
        if "markers" not in ctx.warned:
            logger.warning(
                "program evolution is on but %s has no research-guidance section (%s ... %s); skipped",
                ctx.config.program,
                programs.GUIDANCE_START,
                programs.GUIDANCE_END,
            )
            ctx.warned.add("markers")
        return current
    pctx = ProgramContext(
        program=current,
        guidance=guidance,
        notes=notes,
        history=history,
        best_val_bpb=state.best.val_bpb if state.best else None,
        baseline_val_bpb=state.noise.mean if state.noise else None,
        candidates=candidates,
        view_trial=view,
    )
    ctx.progress.phase(f"#{candidates}", f"asking the agent to revise program.md{ctx.cost_note()}")
    new = evolve(ctx, seat, pctx, human, current, steps, candidates)
    check_cost(ctx.spent_usd(), ctx.config)
    return new


def evolved(ctx: RunContext, human: str, steps: Sequence[ProgramRecord]) -> str:
    """The human's program.md with the last applied step's guidance (the human's alone if none)."""
    applied = [p for p in steps if p.outcome == "applied"]
    if not applied or programs.split(human) is None:
        return human
    path = ctx.paths.programs / f"{applied[-1].program_id}.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        logger.warning("%s is missing (%s): using program.md as written", path, exc)
        return human
    guidance = programs.guidance_of(text)
    return programs.with_guidance(human, guidance) if guidance is not None else human


def evolve(
    ctx: RunContext,
    seat: Seat,
    pctx: ProgramContext,
    human: str,
    current: str,
    steps: Sequence[ProgramRecord],
    candidates: int,
) -> str:
    """One program-evolution step: ask, store, commit, record. Returns the program.md to use."""
    agent = seat.agent
    assert isinstance(agent, ProgramEditor)
    program_id = f"p{len(steps) + 1:04d}"
    started = time.monotonic()
    try:
        proposal = agent.propose_program(pctx, ctx.cancel)
    except AgentCancelled as exc:
        ctx.record_spend(seat, exc.usage or Usage(), f"program evolution {program_id}: {exc}")
        raise Cancelled(f"program evolution {program_id} cancelled") from exc
    except AgentCapReached as exc:
        ctx.record_spend(seat, exc.usage or Usage(), f"program evolution {program_id}: {exc}")
        raise CapReached(f"{exc}. Raise the cap and run the same command to continue.", cap=exc.cap) from exc
    except AgentFatal as exc:
        raise AgentGaveUp(f"the {agent.name} agent cannot work as configured: {exc}") from exc
    except AgentError as exc:
        logger.warning("program evolution %s failed: %s; program.md stays as it is", program_id, exc)
        record = ProgramRecord(
            program_id=program_id,
            outcome="failed",
            after_candidates=candidates,
            worker=seat.name,
            description=f"failed: {exc}"[:500],
            agent=AgentRecord(name=agent.name, usage=exc.usage or Usage()),
            created_at=now_iso(),
        )
        ctx.ledger.append(record.to_row())
        return current
    new = programs.with_guidance(human, proposal.guidance)
    if programs.rules_of(new) != programs.rules_of(human):  # by construction; checked all the same
        raise LoopError("a program-evolution step would have changed program.md's rules; nothing written")
    applied = [p for p in steps if p.outcome == "applied" and p.commit]
    previous = applied[-1].commit if applied else None
    ctx.paths.programs.mkdir(parents=True, exist_ok=True)
    md = ctx.paths.programs / f"{program_id}.md"
    diff_path = ctx.paths.programs / f"{program_id}.diff"
    write_atomic(md, new)
    label = applied[-1].program_id if applied else "as written"
    write_atomic(diff_path, programs.program_diff(current, new, old_label=label, new_label=program_id))
    with ctx.ledger.locked():
        if previous is None:  # the chain's root: the program.md the first step started from
            previous = ctx.lineage.commit_program(
                current, parent=None, message="program.md as the human wrote it\n"
            )
        commit = ctx.lineage.commit_program(
            new,
            parent=previous,
            message=f"{program_id}: {proposal.description}\n\nAfter {candidates} candidate trials.\n",
        )
        record = ProgramRecord(
            program_id=program_id,
            outcome="applied",
            after_candidates=candidates,
            worker=seat.name,
            description=proposal.description,
            commit=commit,
            parent_commit=previous,
            program_sha256=sha256_file(md),
            previous_sha256=hashlib.sha256(current.encode()).hexdigest(),
            diff_sha256=sha256_file(diff_path),
            agent=AgentRecord(
                name=agent.name,
                model=proposal.usage.model,
                usage=proposal.usage,
                propose_s=round(time.monotonic() - started, 3),
            ),
            created_at=now_iso(),
        )
        ctx.ledger.append(record.to_row())
        ctx.lineage.set_program(commit, why=f"{program_id} after {candidates} candidates")
    logger.info("program.md revised (%s): %s", program_id, proposal.description)
    return new


def current_program(ctx: RunContext) -> str:
    """program.md as it is now: the human may edit it during the night; a vanished file keeps the last text."""
    try:
        ctx.program = read_program(ctx.config.program)
    except ProgramMissing:
        logger.warning("%s disappeared; the agent keeps the last version it read", ctx.config.program)
    return ctx.program
