"""The final judgement and the records of a finished trial.

`record` writes the trial's manifest.json, then, under the ledger lock, re-reads the ledger, decides
against the best as it is *now* (with several workers, the best at the moment the trial lands), and
appends the ledger row, the results.tsv row and the lineage ref in that order. Deliberate: nothing in
here looks at the run's cancel event, so a trial that reached its records gets all of them; a crash
between them is repaired at the next start (a torn ledger tail, results.tsv synced from the ledger,
lineage refs reconciled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from harness import canary
from harness.config import TrialPaths
from harness.judge import Action, JudgeState, judge, judge_paired
from harness.loop.common import now_iso
from harness.loop.context import RunContext
from harness.loop.errors import LoopError
from harness.loop.outcomes import Outcome, RunRole, Seat
from harness.records.manifest import hash_tree, manifest_for, manifest_text
from harness.records.results import rows_for
from harness.records.schemas import RunRecord, StarvedAttempt, TrialFacts, TrialPlan, TrialRecord
from sandbox import constants as C
from sandbox.constants import Decision, Status
from sandbox.incontainer.fileio import atomic_write as write_atomic
from sandbox.incontainer.fileio import sha256_file
from sandbox.verdict import Verdict

logger = logging.getLogger(__name__)


def keeps_between(records: Sequence[TrialRecord], start: str, end: str) -> list[tuple[float, int]] | None:
    """The keeps that moved the best from commit `start` to `end`, oldest first, each as (its mean
    paired difference against its predecessor, its pairs); None when one was not judged on pairs."""
    kept = {r.candidate_commit: r for r in records if r.decision is Decision.KEEP}
    chain: list[tuple[float, int]] = []
    commit = end
    while commit != start:
        record = kept.get(commit)
        j = record.judge if record is not None else None
        if not j or j.get("mean_diff") is None or not j.get("best_commit") or len(chain) > len(records):
            return None
        chain.append((float(j["mean_diff"]), len(j.get("pairs") or []) or 1))
        commit = str(j["best_commit"])
    return chain[::-1]


def decide(
    ctx: RunContext,
    plan: TrialPlan,
    verdicts: Sequence[Verdict],
    state: JudgeState,
    roles: Sequence[RunRole] = (),
    records: Sequence[TrialRecord] = (),
) -> Outcome:
    """The outcome of a finished trial, judged against `state` (the ledger as it is now)."""
    if plan.invalid is not None:
        return Outcome(Status.CRASH, Decision.CRASH, plan.invalid)
    if any(v.status is Status.STARVED for v in verdicts):  # the runner never returns one
        raise LoopError(f"{plan.trial_id}: a starved run reached the judge; nothing was recorded")
    first = verdicts[0]
    if plan.kind == "canary":
        c = canary.decide(first)
        return Outcome(c.status, c.decision, c.reason, c.val_bpb)
    if first.status is not Status.OK:
        return Outcome(first.status, Decision.CRASH, first.reason)
    if plan.kind == "baseline":
        return Outcome(Status.OK, Decision.BASELINE, "baseline run", first.val_bpb)
    assert state.best is not None and state.noise is not None
    settings = ctx.config.judge
    roles = list(roles) or [RunRole() for _ in verdicts]
    mine = [v for v, r in zip(verdicts, roles, strict=True) if r.role == "candidate"]
    scores = [v.val_bpb for v in mine if v.status is Status.OK and v.val_bpb is not None]
    failed = next(((v, r) for v, r in zip(verdicts, roles, strict=True) if v.status is not Status.OK), None)
    if failed is not None:  # a confirmation run did not score: the keep is not confirmed
        v, r = failed
        mean = sum(scores) / len(scores)
        if r.role == "best":
            reason = f"not confirmed: the best's paired re-run ended {v.status.value}: {v.reason}"
            return Outcome(Status.OK, Decision.DISCARD, reason, mean)
        reason = f"not confirmed: the confirmation run ended {v.status.value}: {v.reason}"
        return Outcome(v.status, Decision.DISCARD, reason, mean)
    if len(verdicts) > 1:
        paired_best = next((r.commit for r in roles if r.role == "best"), None) or "?"
        via = keeps_between(records, paired_best, state.best.commit)
        if via is None:  # the best moved on by a keep with no paired judgement to chain through
            reason = (
                f"not confirmed in time: it was paired with {paired_best[:7]}, but the best became "
                f"{state.best.commit[:7]} ({state.best.trial_id}) while it ran"
            )
            return Outcome(Status.OK, Decision.DISCARD, reason, sum(scores) / len(scores))
        by_pair: dict[int, dict[str, float]] = {}
        for v, r in zip(verdicts, roles, strict=True):
            if r.pair and v.val_bpb is not None:
                by_pair.setdefault(r.pair, {})[r.role] = v.val_bpb
        pairs = [(p["candidate"], p["best"]) for _, p in sorted(by_pair.items())]
        pj = judge_paired(
            state.best,
            state.noise,
            scores[0],
            pairs,
            plan.code_lines,
            settings,
            paired_with=paired_best,
            via=via,
        )
        return Outcome(Status.OK, pj.decision, pj.reason, pj.score, pj.model_dump(mode="json"))
    j = judge(state.best, state.noise, scores, plan.code_lines, settings)
    if j.action is Action.CONFIRM:  # best moved under us (another worker): judged as unconfirmed
        return Outcome(
            Status.OK,
            Decision.DISCARD,
            f"not confirmed in time: {j.reason}",
            j.score,
            j.model_dump(mode="json"),
        )
    return Outcome(Status.OK, j.decision, j.reason, j.score, j.model_dump(mode="json"))


def record(
    ctx: RunContext,
    seat: Seat,
    plan: TrialPlan,
    verdicts: Sequence[Verdict],
    started_at: str,
    roles: Sequence[RunRole] = (),
) -> TrialRecord:
    tp = ctx.paths.trial(plan.trial_id)
    roles = list(roles) or [RunRole() for _ in verdicts]
    runs = [run_record(tp, i, v, r) for i, (v, r) in enumerate(zip(verdicts, roles, strict=True))]
    memory = [v.peak_memory_gb for v in verdicts if v.peak_memory_gb is not None]
    first = verdicts[0] if verdicts else None
    facts = TrialFacts(
        trial_id=plan.trial_id,
        kind=plan.kind,
        parent_commit=plan.parent_commit,
        candidate_commit=plan.candidate_commit,
        seeds=[r.seed for r in runs],
        runs=runs,
        images=first.images if first else {},
        limits=seat.limits.model_dump(mode="json"),
        gpu_ids=list(seat.gpu_ids),
        agent=plan.agent,
    )
    manifest = manifest_for(facts, hash_tree(tp.dir, skip=frozenset({tp.manifest.name})))
    write_atomic(tp.manifest, manifest_text(manifest))
    hashes = {**manifest["hashes"], tp.manifest.name: sha256_file(tp.manifest)}
    with ctx.ledger.locked():
        records = ctx.ledger.records()
        state = ctx.state(records)
        outcome = decide(ctx, plan, verdicts, state, roles, records)
        row = TrialRecord(
            **dict(facts),
            worker=seat.name,
            status=outcome.status,
            decision=outcome.decision,
            reason=outcome.reason,
            description=plan.description,
            val_bpb=outcome.val_bpb,
            claimed_val_bpb=first.claimed_val_bpb if first else None,
            memory_gb=max(memory) if memory else None,
            code_lines=plan.code_lines,
            judge=outcome.judgement,
            hashes=hashes,
            timings=timings(plan, verdicts),
            started_at=started_at,
            finished_at=now_iso(),
            canary=canary.check(first, tp.dir, tp.candidate) if plan.kind == "canary" and first else None,
            notes_sha256=plan.notes_sha256,
            starved=starved_attempts(tp),
        )
        written = TrialRecord.model_validate(ctx.ledger.append(row.to_row()))
        ctx.results.append(rows_for([written]))  # none for a canary: results.tsv lists experiments
        if plan.kind == "candidate":
            assert plan.candidate_commit is not None  # TrialPlan: every trial but a canary has one
            if outcome.decision is Decision.KEEP:
                assert state.best is not None
                ctx.lineage.keep(plan.trial_id, plan.candidate_commit, expected_head=state.best.commit)
            else:
                ctx.lineage.discard(plan.trial_id, plan.candidate_commit)
        ctx.recorded += 1
    ctx.progress.recorded(written, ctx.state([*records, written]))
    return written


def starved_attempts(tp: TrialPaths) -> list[StarvedAttempt]:
    """The trial's starved runs, from their verdicts under starved/ (this start's and earlier ones')."""
    attempts: list[StarvedAttempt] = []
    if not tp.starved_dir.is_dir():
        return attempts
    folders = [p for p in tp.starved_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    for folder in sorted(folders, key=lambda p: int(p.name)):
        path = folder / C.VERDICT_FILE
        if not path.is_file():
            continue
        v = Verdict.model_validate_json(path.read_text(encoding="utf-8"))
        attempts.append(
            StarvedAttempt(
                folder=folder.relative_to(tp.dir).as_posix(),
                sandbox_trial_id=v.trial_id,
                compute_share=v.compute_share,
                compute=v.compute,
                reason=v.reason,
            )
        )
    return attempts


def run_record(tp: TrialPaths, run: int, v: Verdict, role: RunRole | None = None) -> RunRecord:
    role = role or RunRole()
    return RunRecord(
        run=run,
        sandbox_trial_id=v.trial_id,
        folder=tp.run_dir(run).relative_to(tp.dir).as_posix(),
        seed=v.seed,
        status=v.status,
        val_bpb=v.val_bpb,
        claimed_val_bpb=v.claimed_val_bpb,
        reason=v.reason,
        timings={k: float(x) for k, x in v.timings.items() if isinstance(x, int | float) and x == x},
        peak_memory_gb=v.peak_memory_gb,
        images=v.images,
        limits=v.limits,
        gpu_ids=v.gpu_ids,
        backend=v.backend,
        artifact_sha256=v.report.artifact_sha256 if v.report else None,
        compute_share=v.compute_share,
        compute=v.compute,
        role=role.role,
        commit=role.commit,
        pair=role.pair,
        node=v.node,
    )


def timings(plan: TrialPlan, verdicts: Sequence[Verdict]) -> dict[str, float]:
    out: dict[str, float] = {}
    if plan.agent is not None:
        out["propose_s"] = plan.agent.propose_s
    for i, v in enumerate(verdicts):
        total = v.timings.get("total_s")
        if isinstance(total, int | float):
            out[f"run{i}_total_s"] = float(total)
    return out
