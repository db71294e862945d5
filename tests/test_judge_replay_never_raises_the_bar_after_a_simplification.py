"""The bar a candidate must beat never rises, on the path production takes: the loop rebuilds the
judge's state from the ledger with `replay` before every judgement, so `replay` (not `after_keep`,
which the loop never calls) must keep the bar at `min(bar, score)` after a keep. A simplification
(a shorter train.py kept within the noise, at a slightly worse score) moves the best commit and its
line count, never the bar up.

Attack defeated: a chain of "equal but shorter" keeps ratcheting the score upwards, each within the
noise of the one before, until the run's best is clearly worse than its baseline. Checked on
`replay` directly and through the loop with the engine-free fake sandbox, where the second
simplification would be kept against a risen bar and must be discarded against the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.judge import JudgedRow, JudgeSettings, judge, replay
from harness.loop import ResearchLoop
from harness.records.chain import Ledger
from sandbox.constants import Decision
from tests.agent_fakes import ScriptedAgent
from tests.test_loop_fakes_honour_the_protocols import (
    FakeSandbox,
    Sleeps,
    edit,
    run_config,
    with_score,
    without_line,
)

SETTINGS = JudgeSettings(baseline_repeats=3, noise_k=2.0, min_delta=0.001, confirm_keeps=True)


def row(trial_id: str, kind: str, decision: Decision, val: float | None, lines: int) -> JudgedRow:
    return JudgedRow(
        trial_id=trial_id,
        kind=kind,
        decision=decision,
        val_bpb=val,
        candidate_commit=trial_id.ljust(40, "0"),
        code_lines=lines,
    )


BASELINE = [
    row("t0000", "baseline", Decision.BASELINE, 1.00, 100),
    row("t0001", "baseline", Decision.BASELINE, 1.01, 100),
    row("t0002", "baseline", Decision.BASELINE, 0.99, 100),
]  # bar 1.0, threshold 2 * 0.01 = 0.02


def test_replay_keeps_the_bar_after_a_simplification_and_moves_the_best() -> None:
    state = replay([*BASELINE, row("t0003", "candidate", Decision.KEEP, 1.0125, 90)], SETTINGS)
    assert state.best is not None and state.noise is not None
    assert state.best.val_bpb == pytest.approx(1.0)  # min(1.0, 1.0125): the bar stays
    assert (state.best.trial_id, state.best.code_lines) == ("t0003", 90)  # the shorter file is the best
    assert state.best.commit == "t0003".ljust(40, "0")
    # A second simplification is judged against the ORIGINAL bar: 1.025 is beyond its noise (1.02).
    assert judge(state.best, state.noise, [1.025, 1.025], 80, SETTINGS).decision is Decision.DISCARD


def test_replay_lets_an_improvement_lower_the_bar_and_no_later_simplification_raise_it() -> None:
    rows = [
        *BASELINE,
        row("t0003", "candidate", Decision.KEEP, 1.0125, 90),  # simplification
        row("t0004", "candidate", Decision.KEEP, 1.015, 85),  # another: 1.0 still
        row("t0005", "candidate", Decision.KEEP, 0.95, 88),  # improvement: the bar falls
        row("t0006", "candidate", Decision.DISCARD, 0.90, 70),  # recorded discard: ignored
        row("t0007", "candidate", Decision.KEEP, 0.96, 80),  # simplification: 0.95 still
    ]
    bars = [replay(rows[:n], SETTINGS).best for n in range(3, len(rows) + 1)]
    assert [b.val_bpb if b else None for b in bars] == pytest.approx([1.0, 1.0, 1.0, 0.95, 0.95, 0.95])
    last = bars[-1]
    assert last is not None and (last.trial_id, last.code_lines) == ("t0007", 80)


def test_the_loop_judges_the_next_simplification_against_the_bar_that_never_rose(tmp_path: Path) -> None:
    """Through ResearchLoop: baselines score exactly 1.0 (threshold = min_delta = 0.001); a shorter file
    at 1.0008 is kept; a still shorter one at 1.0015 is within the noise of 1.0008 but not of 1.0, so
    it is discarded, and its recorded judgement names the bar 1.0."""
    config = run_config(tmp_path, max_trials=2)  # baseline_repeats=2, min_delta=0.001, confirm_keeps
    agent = ScriptedAgent(
        [
            edit(lambda t: without_line(with_score(t, 1.0008), "PAD_3"), "shorter, as good"),
            edit(lambda t: without_line(with_score(t, 1.0015), "PAD_2"), "shorter again, a bit worse"),
        ]
    )
    ResearchLoop(config, FakeSandbox(), agent, sleep=Sleeps()).run()
    records = Ledger(config.run_dir / "ledger.jsonl").records()
    simplification, second = records[-2], records[-1]
    assert simplification.decision is Decision.KEEP and simplification.judge is not None
    assert simplification.judge["kind"] == "simplification" and simplification.val_bpb == pytest.approx(
        1.0008
    )
    assert second.parent_commit == simplification.candidate_commit  # it started from the kept file
    assert second.judge is not None and second.judge["bar"] == pytest.approx(1.0)
    assert second.decision is Decision.DISCARD, second.reason
    assert second.code_lines < simplification.code_lines
