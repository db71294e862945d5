"""With several workers, a candidate is judged against the best at the moment its row lands (under
the ledger lock), not the best when it started; and every proposal made after a keep landed starts
from that keep, whichever worker made it.

The race is built with waits on events, not timing: worker 0's candidate A beats the baseline, so
it is re-run to confirm it; worker 1's candidate B, better still, runs once A's confirmation has
started, and A's confirmation waits until B has landed as a keep. A (0.95) is then discarded against B's bar (0.90), though it beat the baseline
(1.0) it started from; worker 0's next proposal is made from B's train.py. In the second race A
(0.80) beats B: it is kept against B's bar, the branch moves to A, and B stays reachable under
refs/autoresearch/superseded/. A's paired runs ran against the baseline; it is judged against B
through B's own paired difference to that same baseline (both drift-free).

Judging a trial against the state read when it started (instead of re-reading the ledger under the
lock in `_record`) keeps A in the first race: the assertion on its decision fails.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from harness.agents.base import AgentContext, Proposal
from harness.loop import CONFIRM_SUFFIX, ResearchLoop
from harness.records.lineage import SUPERSEDED, Lineage
from sandbox.constants import Decision
from sandbox.verdict import TrialSpec
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import Sleeps, edit, with_score
from tests.workers_fakes import (
    RecordingSandbox,
    assert_records_agree,
    leases_for,
    ledger_has,
    wait_until,
    workers_config,
)


def race(tmp_path: Path, slow: float, fast: float) -> tuple[list[AgentContext], list[str]]:
    """Worker 0 proposes `slow` (its confirmation waits for a keep), worker 1 `fast`; then worker 0
    proposes once more. Returns worker 0's second context and the ledger's trial ids in order."""
    config = workers_config(tmp_path, 2, max_trials=10)
    seen: list[AgentContext] = []

    def after(ctx: AgentContext) -> Proposal:
        seen.append(ctx)
        return Proposal(train_py=with_score(ctx.train_py, 1.3), description="after the race")

    agents = {
        0: ScriptedAgent([edit(partial(with_score, score=slow), "slow"), after]),
        1: ScriptedAgent([edit(partial(with_score, score=fast), "fast")]),
    }

    confirming: list[str] = []

    def gate(spec: TrialSpec) -> None:
        text = spec.candidate.read_text(encoding="utf-8")
        confirm = spec.trial_id.endswith(CONFIRM_SUFFIX)
        if confirm and f"SCORE = {slow:.6f}" in text:  # A was judged a would-be keep against the baseline
            confirming.append(spec.trial_id)
            wait_until(
                lambda: ledger_has(config.run_dir, lambda r: r.decision is Decision.KEEP),
                "the other worker's keep to land",
            )
        if not confirm and f"SCORE = {fast:.6f}" in text:  # B starts once A is confirming
            wait_until(lambda: bool(confirming), "the slow candidate's confirmation run")

    loop = ResearchLoop(
        config,
        RecordingSandbox(gate),
        agents[0],
        sleep=Sleeps(),
        leases=leases_for(tmp_path, 2),
        agent_factory=lambda k: agents[k],
    )
    loop.run()
    records = assert_records_agree(config)
    return seen, [r.trial_id for r in records]


def test_a_keep_that_lands_late_is_judged_against_the_new_best(tmp_path: Path) -> None:
    seen, _ = race(tmp_path, slow=0.95, fast=0.90)
    config = workers_config(tmp_path, 2)
    records = {r.description: r for r in assert_records_agree(config)}
    slow, fast = records["slow"], records["fast"]
    assert fast.decision is Decision.KEEP
    assert slow.parent_commit == fast.parent_commit, "both started from the baseline"
    assert len(slow.runs) == 5, "the slow candidate beat the baseline, so it was confirmed on 2 pairs"
    assert slow.decision is Decision.DISCARD, slow.reason
    assert slow.judge is not None and slow.judge["bar"] == fast.val_bpb == 0.90
    assert slow.judge["best_commit"] == fast.candidate_commit
    assert slow.judge["mean_diff"] == pytest.approx(0.95 - 0.90)  # against B, through B's own pairs
    assert "not confirmed" in slow.reason and "through the 1 keep(s)" in slow.reason

    # Worker 0's next proposal starts from the keep that worker 1 landed meanwhile.
    assert len(seen) == 1
    assert "SCORE = 0.900000" in seen[0].train_py and seen[0].best_val_bpb == 0.90
    assert records["after the race"].parent_commit == fast.candidate_commit
    lineage = Lineage(config.run_dir / "lineage", config.run_tag)
    assert lineage.head() == fast.candidate_commit
    assert lineage.refs(SUPERSEDED) == {}


def test_a_better_keep_that_lands_late_replaces_the_new_best(tmp_path: Path) -> None:
    race(tmp_path, slow=0.80, fast=0.90)
    config = workers_config(tmp_path, 2)
    records = {r.description: r for r in assert_records_agree(config)}
    slow, fast = records["slow"], records["fast"]
    assert fast.decision is Decision.KEEP and slow.decision is Decision.KEEP
    assert slow.judge is not None and slow.judge["bar"] == 0.90, "judged against the keep that landed first"
    assert slow.judge["mean_diff"] == pytest.approx(0.80 - 0.90)
    assert records["after the race"].parent_commit == slow.candidate_commit
    lineage = Lineage(config.run_dir / "lineage", config.run_tag)
    assert lineage.head() == slow.candidate_commit
    assert lineage.refs(SUPERSEDED) == {slow.trial_id: fast.candidate_commit}, (
        "the replaced best stays reachable"
    )
