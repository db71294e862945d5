"""A would-be keep is confirmed on paired runs of it and the current best, so a host that got faster
(or slower) since the baseline cancels out; the noise estimate pools every repeated run the run has;
and the keep rule's stated false-keep rate holds.

Accidents this defeats: a no-op candidate kept because the host sped up after the baseline (both of
its runs beat a bar measured on the slower host, which the old "confirm with another seed" rule
accepted); a threshold resting on three baseline runs for the whole night; a resumed run judging with
a different noise estimate than the one it had (the state, pooled noise included, is rebuilt from the
ledger alone by the same `replay` the loop uses).
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import pytest

from harness.judge import (
    Action,
    Best,
    JudgedRow,
    JudgeSettings,
    JudgeState,
    judge,
    judge_paired,
    replay,
)
from harness.judge_stats import pooled_noise, t_quantile
from harness.loop import ResearchLoop
from harness.records.chain import Ledger
from sandbox.constants import Decision
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox, Sleeps, edit, run_config, with_score

SETTINGS = JudgeSettings(
    baseline_repeats=3, noise_k=1.0, min_delta=0.0, confirm_pairs=2, false_keep_rate=0.05
)


def test_t_quantiles_match_the_tables() -> None:
    table = {(0.95, 1): 6.313752, (0.95, 2): 2.919986, (0.95, 10): 1.812461, (0.99, 5): 3.364930}
    for (p, df), value in table.items():
        assert t_quantile(p, df) == pytest.approx(value, rel=1e-5)
    assert t_quantile(0.05, 4) == pytest.approx(-t_quantile(0.95, 4))
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, rel=1e-4)  # close to the normal's 1.96


def test_pooled_noise_is_the_within_group_standard_deviation() -> None:
    groups = [[1.00, 1.02, 0.98], [0.90, 0.94], [0.80]]  # baseline; a confirmed candidate; a single run
    noise = pooled_noise(groups, baseline=groups[0], noise_k=2.0, min_delta=0.0)
    squares = (0.0**2 + 0.02**2 + 0.02**2) + (0.02**2 + 0.02**2)
    assert noise.df == 2 + 1  # a single run adds no degree of freedom
    assert noise.std == pytest.approx(math.sqrt(squares / 3))
    assert noise.mean == pytest.approx(1.0) and noise.n == 3 and noise.runs == 6
    assert noise.threshold == pytest.approx(2.0 * noise.std)


def row(
    tid: str, kind: str, decision: Decision, val: float | None, runs: list[tuple[str, float]]
) -> JudgedRow:
    return JudgedRow(
        trial_id=tid,
        kind=kind,
        decision=decision,
        val_bpb=val,
        candidate_commit=tid.ljust(40, "0"),
        code_lines=100,
        measurements=tuple((c.ljust(40, "0"), v) for c, v in runs),
    )


def test_replay_pools_baselines_confirmations_and_the_bests_reruns() -> None:
    root = "root"
    rows = [
        JudgedRow(
            trial_id=f"t000{i}",
            kind="baseline",
            decision=Decision.BASELINE,
            val_bpb=v,
            candidate_commit=root.ljust(40, "0"),
            code_lines=100,
            measurements=((root.ljust(40, "0"), v),),
        )
        for i, v in enumerate([1.00, 1.02, 0.98])
    ]
    # t0003: first run 0.95, then pairs (0.96 vs the best 1.01) and (0.94 vs 0.99): discarded.
    rows.append(
        row(
            "t0003",
            "candidate",
            Decision.DISCARD,
            0.95,
            [("t0003", 0.95), ("t0003", 0.96), (root, 1.01), (root, 0.99), ("t0003", 0.94)],
        )
    )
    rows.append(row("t0004", "canary", Decision.CANARY, None, []))  # a control: pooled into nothing
    state = replay(rows, SETTINGS)
    assert state.noise is not None
    expected = pooled_noise(
        [[1.00, 1.02, 0.98, 1.01, 0.99], [0.95, 0.96, 0.94]],
        baseline=[1.00, 1.02, 0.98],
        noise_k=1.0,
        min_delta=0.0,
    )
    assert state.noise == expected and state.noise.df == 4 + 2
    assert state.noise.mean == pytest.approx(1.0)  # the baseline's mean does not move
    assert state.best is not None and state.best.val_bpb == pytest.approx(1.0)  # nor does the bar


def test_the_stated_false_keep_rate_holds_for_no_op_candidates() -> None:
    """Monte Carlo on Gaussian noise: no-op candidates (same mean as the best) screened and confirmed."""
    rng = random.Random(12)
    alpha, trials = SETTINGS.false_keep_rate, 6000
    best = Best(trial_id="b", commit="r" * 40, val_bpb=0.0, code_lines=100)
    screened = kept = paired_only = 0
    for _ in range(trials):
        state = JudgeState()
        for i in range(3):
            state = state.with_baseline(
                rng.gauss(0, 1), trial_id=f"b{i}", commit="r" * 40, lines=100, settings=SETTINGS
            )
        assert state.noise is not None and state.best is not None
        pairs = [(rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(SETTINGS.confirm_pairs)]
        paired = judge_paired(best, state.noise, 0.0, pairs, 100, SETTINGS)
        paired_only += paired.decision is Decision.KEEP
        if judge(state.best, state.noise, [rng.gauss(0, 1)], 100, SETTINGS).action is Action.CONFIRM:
            screened += 1
            kept += paired.decision is Decision.KEEP
    se = math.sqrt(alpha * (1 - alpha) / trials)
    assert abs(paired_only / trials - alpha) < 4 * se  # the paired test alone: exactly the stated rate
    assert kept / trials <= alpha  # screened and confirmed: at most the stated rate
    assert 0 < screened < trials


def test_a_paired_confirmation_cancels_a_host_that_sped_up(tmp_path: Path) -> None:
    """Baselines on a slow host; from the first candidate on, every run is 0.05 faster."""
    config = run_config(
        tmp_path,
        max_trials=2,
        judge=JudgeSettings(baseline_repeats=3, noise_k=2.0, min_delta=0.001, confirm_pairs=2),
    )
    sandbox = FakeSandbox(noise=0.002, drift=lambda k: 0.0 if k < 3 else -0.05)
    agent = ScriptedAgent(
        [
            edit(lambda t: t + "# the same code, one comment more\n", "a no-op"),
            edit(lambda t: with_score(t, 0.9), "a real gain"),
        ]
    )
    ResearchLoop(config, sandbox, agent, sleep=Sleeps()).run()
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    noop, gain = records[3], records[4]
    assert (
        noop.runs[0].val_bpb is not None and noop.runs[0].val_bpb < 0.96
    )  # the first run looked like a gain
    assert len(noop.runs) == 5 and noop.decision is Decision.DISCARD and "not confirmed" in noop.reason
    assert noop.judge is not None and abs(noop.judge["mean_diff"]) < 0.01
    assert gain.decision is Decision.KEEP and gain.judge is not None
    assert gain.judge["mean_diff"] == pytest.approx(-0.1, abs=0.01)
    best_runs = [r for r in gain.runs if r.role == "best"]
    assert len(best_runs) == 2 and all(r.commit == records[0].candidate_commit for r in best_runs)
    # Resume: the state rebuilt from the ledger alone pools every one of these runs.
    state = replay((r.judged() for r in records), config.judge)
    assert state.noise is not None and state.noise.runs == 3 + 5 + 5
    assert state.noise.df == (3 + 2 + 2 - 1) + (3 - 1) + (3 - 1)  # root's group, the no-op's, the gain's
    assert state.best is not None and state.best.trial_id == gain.trial_id
    assert statistics.fmean(r.val_bpb or 0 for r in gain.runs if r.role == "candidate") == pytest.approx(
        gain.val_bpb or 0
    )


def test_a_keep_paired_with_an_older_best_is_judged_through_the_keeps_since() -> None:
    """Another worker kept B (paired against the root, -0.10) while A's pairs ran against the root."""
    noise = pooled_noise([[1.0, 1.01, 0.99]], baseline=[1.0, 1.01, 0.99], noise_k=1.0, min_delta=0.0)
    b = Best(trial_id="B", commit="b" * 40, val_bpb=0.90, code_lines=100)
    settings = SETTINGS
    a = judge_paired(
        b, noise, 0.85, [(0.87, 1.0), (0.87, 1.0)], 100, settings, paired_with="r" * 40, via=[(-0.10, 2)]
    )
    assert a.mean_diff == pytest.approx(-0.03)  # A - root = -0.13; B - root = -0.10
    assert a.paired_threshold == pytest.approx(t_quantile(0.95, 2) * noise.std * math.sqrt(2 / 2 + 2 / 2))
    assert a.decision is Decision.DISCARD  # 0.03 is within the combined noise of both pairs (0.041)
    alone = judge_paired(b, noise, 0.85, [(0.87, 1.0), (0.87, 1.0)], 100, settings)
    assert alone.decision is Decision.KEEP  # the same pairs read as if against B would have kept it
    assert a.best_commit == "b" * 40 and a.paired_with == "r" * 40
    assert "through the 1 keep(s)" in a.reason
