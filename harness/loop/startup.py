"""Start-up and resume: repair a torn ledger tail (only that), verify the ledger (a run never continues
on edited history), check run.json, open the lineage, append the results.tsv rows a crash left out,
and sort out trial folders that have no ledger row.

A trial folder with a `trial.json` but no ledger row is re-run (its earlier partial output moved
under `interrupted/` when it starts) up to `retries.trial_starts` times, then abandoned
(`<id>.abandoned`, its commit under refs/autoresearch/orphaned/); a folder without `trial.json` was
never complete and is abandoned at once. Trial ids are never reused. A start that ended in a
starvation pause does not count."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from harness.config import TrialPaths
from harness.loop.common import TRIAL_ID, now_iso
from harness.loop.context import RunContext
from harness.loop.errors import LoopError, RunMismatch
from harness.records.results import rows_for
from harness.records.schemas import RunMeta, TrialPlan, TrialRecord
from sandbox.incontainer.fileio import atomic_write as write_atomic

logger = logging.getLogger(__name__)


def start_up(ctx: RunContext) -> list[TrialPlan]:
    """Check and repair the run folder; the trials left without a ledger row, to run first."""
    repaired = ctx.ledger.repair_torn_tail()
    if repaired:
        ctx.changes.append(f"ledger: {repaired}")
    check = ctx.ledger.verify()
    if not check.ok:
        raise LoopError(
            f"the ledger {ctx.paths.ledger} does not verify: {check.bad}. The run will not continue "
            "on edited history: restore ledger.jsonl from a copy, or start a new run folder "
            f"(`python -m harness verify-ledger {ctx.paths.root}` shows the same)."
        )
    with ctx.ledger.locked():
        records = ctx.ledger.records()
        appended = ctx.results.sync(rows_for(records))
    if appended:
        ctx.changes.append(f"results.tsv: appended {appended} row(s) from the ledger")
    meta = _meta(ctx, records)
    if ctx.lineage.head() is None:
        if records:
            raise LoopError(f"{ctx.paths.lineage} is missing but the ledger has rows; restore it from a copy")
        meta = None  # nothing was recorded yet: start afresh from the current train.py
    root = ctx.lineage.ensure_root(_starting_train_py(ctx))
    if meta is None:
        start = ctx.lineage.read(root)
        meta = RunMeta(
            run_tag=ctx.config.run_tag,
            profile=ctx.config.profile,
            agent=ctx.config.agent,
            backend=ctx.config.backend,
            created_at=now_iso(),
            root_commit=root,
            start_sha256=hashlib.sha256(start.encode()).hexdigest(),
            judge=ctx.config.judge,
        )
        write_atomic(ctx.paths.run_json, meta.model_dump_json(indent=2) + "\n")
    pending = pending_trials(ctx, records)
    state = ctx.state(records)
    best = state.best.commit if state.best is not None else root
    decided = {r.trial_id: (r.decision, r.candidate_commit) for r in records if r.kind == "candidate"}
    if ctx.config.judge.baseline_repeats == 1:
        logger.warning("baseline_repeats = 1 gives no noise estimate: the threshold is min_delta alone")
    ctx.changes += ctx.lineage.reconcile(
        best_commit=best, decided=decided, in_progress={p.trial_id for p in pending}
    )
    applied = [p for p in ctx.ledger.programs() if p.outcome == "applied" and p.commit]
    if applied and ctx.lineage.program_head() != applied[-1].commit:
        assert applied[-1].commit is not None
        ctx.lineage.set_program(applied[-1].commit, why=f"{applied[-1].program_id} (reconciled)")
        ctx.changes.append(f"lineage: program ref -> {applied[-1].program_id} (as the ledger records)")
    return pending


def _meta(ctx: RunContext, records: Sequence[TrialRecord]) -> RunMeta | None:
    if not ctx.paths.run_json.exists():
        if records:
            raise LoopError(f"{ctx.paths.run_json} is missing but the ledger has rows; restore it")
        return None
    meta = RunMeta.model_validate_json(ctx.paths.run_json.read_text(encoding="utf-8"))
    c = ctx.config
    if meta.profile != c.profile:
        raise RunMismatch(
            f"{c.run_dir} holds a {meta.profile}-profile run; its numbers cannot be compared with "
            f"profile {c.profile}. Use --profile {meta.profile} or another --run-dir."
        )
    if meta.run_tag != c.run_tag:
        raise RunMismatch(
            f"{c.run_dir} was started with run tag {meta.run_tag!r}, not {c.run_tag!r}; "
            f"use run_tag = {meta.run_tag!r} or another --run-dir"
        )
    for what, was, now in (
        ("agent", meta.agent, c.agent),
        ("backend", meta.backend, c.backend),
        ("judge settings", meta.judge, c.judge),
    ):
        if was != now:
            logger.warning("this run was started with %s %s; continuing with %s", what, was, now)
    return meta


def _starting_train_py(ctx: RunContext) -> str:
    if ctx.lineage.head() is not None:
        return ""  # the lineage already holds it; ensure_root does not read this
    path = ctx.config.train_py
    if not path.is_file():
        raise LoopError(f"the starting train.py {path} does not exist; pass --train-py or create it")
    return path.read_text(encoding="utf-8")


def pending_trials(ctx: RunContext, records: Sequence[TrialRecord]) -> list[TrialPlan]:
    """Trial folders without a ledger row: re-run them, or abandon them (see the module docstring)."""
    recorded = {r.trial_id for r in records}
    pending: list[TrialPlan] = []
    if not ctx.paths.trials.is_dir():
        return pending
    for folder in sorted(ctx.paths.trials.iterdir()):
        if not folder.is_dir() or not TRIAL_ID.match(folder.name) or folder.name in recorded:
            continue
        tp = TrialPaths(folder)
        if not tp.trial_json.exists():
            _abandon(ctx, tp, "it was never fully prepared (no trial.json)")
            continue
        plan = TrialPlan.model_validate_json(tp.trial_json.read_text(encoding="utf-8"))
        starts = count_starts(tp)
        if starts >= ctx.config.retries.trial_starts:
            _abandon(ctx, tp, f"it was started {starts} times without finishing")
            continue
        pending.append(plan)
        logger.warning("%s was interrupted before its ledger row; running it again", plan.trial_id)
    return pending


def _abandon(ctx: RunContext, tp: TrialPaths, why: str) -> None:
    target = tp.dir.with_name(f"{tp.dir.name}.abandoned")
    n = 1
    while target.exists():
        n += 1
        target = tp.dir.with_name(f"{tp.dir.name}.abandoned{n}")
    tp.dir.rename(target)
    change = f"{tp.dir.name}: abandoned, {why} (moved to trials/{target.name})"
    logger.warning("%s", change)
    ctx.changes.append(change)


def count_starts(tp: TrialPaths) -> int:
    """Starts of a trial so far; a start that ended in a starvation pause does not count."""
    if not tp.starts.exists():
        return 0
    lines = [line for line in tp.starts.read_text(encoding="utf-8").splitlines() if line.strip()]
    paused = sum(1 for line in lines if '"paused"' in line)
    return len(lines) - 2 * paused
