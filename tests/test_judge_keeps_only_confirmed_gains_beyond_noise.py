"""The judge keeps a candidate only when it beats the bar by more than the measured noise, confirmed
by paired runs of it and the best, and lets ties go to the shorter train.py.

Attacks and accidents this defeats: a lucky seed passed off as an improvement (one run is never
enough: the paired confirmation decides); noise mistaken for progress (the threshold is
k·std of repeated baseline runs, floored at min_delta); a chain of "equal but shorter" keeps
drifting the score upwards (the bar never rises); a resumed run judging differently from the
original (the state is rebuilt from recorded decisions, never re-judged).
"""

from __future__ import annotations

import statistics

import pytest

from harness.judge import (
    Action,
    Best,
    JudgedRow,
    JudgeSettings,
    JudgeState,
    Kind,
    code_lines,
    judge,
    judge_paired,
    replay,
)
from harness.judge_stats import noise_floor
from sandbox.constants import Decision

SETTINGS = JudgeSettings(baseline_repeats=3, noise_k=2.0, min_delta=0.001, confirm_keeps=True)


def best(val: float = 1.0, lines: int = 100) -> Best:
    return Best(trial_id="t0002", commit="c" * 40, val_bpb=val, code_lines=lines)


# --------------------------------------------------------------------------- noise floor


def test_threshold_is_k_times_the_sample_std_of_the_baseline_runs() -> None:
    runs = [1.000, 1.010, 0.990]
    noise = noise_floor(runs, noise_k=2.0, min_delta=0.001)
    assert noise.std == pytest.approx(statistics.stdev(runs))
    assert noise.threshold == pytest.approx(2.0 * statistics.stdev(runs))
    assert noise.mean == pytest.approx(1.0)
    assert noise.n == 3


def test_min_delta_floors_the_threshold_when_runs_agree() -> None:
    assert noise_floor([1.0, 1.0, 1.0], noise_k=2.0, min_delta=0.004).threshold == 0.004
    assert noise_floor([1.0], noise_k=2.0, min_delta=0.002).threshold == 0.002  # one run: no estimate


def test_noise_floor_needs_a_run() -> None:
    with pytest.raises(ValueError, match="at least one"):
        noise_floor([], noise_k=2.0, min_delta=0.0)


def test_baseline_closes_after_the_configured_repeats_at_their_mean() -> None:
    state = JudgeState()
    for i, v in enumerate([1.00, 1.02, 0.98]):
        assert not state.ready
        state = state.with_baseline(v, trial_id=f"t000{i}", commit="r" * 40, lines=50, settings=SETTINGS)
    assert state.ready and state.best is not None and state.noise is not None
    assert state.best.val_bpb == pytest.approx(1.0)  # the mean, not the luckiest run
    assert state.noise.threshold == pytest.approx(2 * statistics.stdev([1.00, 1.02, 0.98]))
    with pytest.raises(ValueError, match="already complete"):
        state.with_baseline(1.0, trial_id="t9", commit="r" * 40, lines=50, settings=SETTINGS)


# --------------------------------------------------------------------------- keep, confirm, discard


def test_a_gain_beyond_the_threshold_asks_for_confirmation_first() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)  # threshold 0.02
    j = judge(best(), noise, [0.97], 100, SETTINGS)
    assert j.action is Action.CONFIRM and j.kind is Kind.IMPROVEMENT
    with pytest.raises(ValueError):
        _ = j.decision


def test_a_paired_confirmation_beyond_the_noise_is_kept_and_scored_at_the_candidates_mean() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)  # s 0.01, df 2
    j = judge_paired(best(), noise, 0.97, [(0.96, 1.0), (0.965, 1.0)], 100, SETTINGS)
    assert j.decision is Decision.KEEP and j.kind is Kind.IMPROVEMENT
    assert j.score == pytest.approx((0.97 + 0.96 + 0.965) / 3)
    assert j.mean_diff == pytest.approx(-0.0375) and j.df == 2
    # t(0.95, 2) = 2.92: the mean difference must be below -2.92 * 0.01 * sqrt(2/2).
    assert j.paired_threshold == pytest.approx(2.919986 * 0.01, rel=1e-4)


def test_a_lucky_first_seed_is_not_enough_the_pairs_decide() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)
    assert judge(best(), noise, [0.97], 100, SETTINGS).action is Action.CONFIRM
    j = judge_paired(best(), noise, 0.97, [(1.0, 0.995), (0.99, 1.0)], 100, SETTINGS)
    assert j.decision is Decision.DISCARD
    assert "not confirmed" in j.reason


def test_a_gain_within_the_noise_is_discarded() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)
    j = judge(best(), noise, [0.99], 100, SETTINGS)
    assert j.decision is Decision.DISCARD and j.kind is Kind.NO_GAIN
    assert "not shorter" in j.reason


def test_worse_is_discarded_without_confirmation() -> None:
    noise = noise_floor([1.0, 1.0], noise_k=2.0, min_delta=0.001)
    j = judge(best(), noise, [1.5], 100, SETTINGS)
    assert j.action is Action.DISCARD and "worse" in j.reason


def test_without_confirm_keeps_one_run_decides() -> None:
    settings = SETTINGS.model_copy(update={"confirm_keeps": False})
    noise = noise_floor([1.0, 1.0], noise_k=2.0, min_delta=0.001)
    assert judge(best(), noise, [0.99], 100, settings).decision is Decision.KEEP


# --------------------------------------------------------------------------- ties favour the shorter file


def test_a_tie_with_fewer_code_lines_is_a_keep() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)
    first = judge(best(lines=100), noise, [1.005], 90, SETTINGS)
    assert first.action is Action.CONFIRM and first.kind is Kind.SIMPLIFICATION
    final = judge_paired(best(lines=100), noise, 1.005, [(1.0, 0.995), (0.995, 1.0)], 90, SETTINGS)
    assert final.decision is Decision.KEEP and final.kind is Kind.SIMPLIFICATION
    assert "shorter" in final.reason
    worse = judge_paired(best(lines=100), noise, 1.005, [(1.05, 1.0), (1.06, 1.0)], 90, SETTINGS)
    assert worse.decision is Decision.DISCARD  # shorter, but detectably worse in the pairs


def test_a_tie_with_as_many_lines_is_a_discard() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)
    assert judge(best(lines=100), noise, [1.0], 100, SETTINGS).decision is Decision.DISCARD


def test_shorter_but_worse_than_the_noise_is_a_discard() -> None:
    noise = noise_floor([1.0, 1.01, 0.99], noise_k=2.0, min_delta=0.001)  # threshold 0.02
    assert judge(best(lines=100), noise, [1.03], 10, SETTINGS).decision is Decision.DISCARD


def test_the_bar_never_rises_after_a_simplification() -> None:
    state = JudgeState()
    for v in (1.0, 1.01, 0.99):
        state = state.with_baseline(v, trial_id="b", commit="r" * 40, lines=100, settings=SETTINGS)
    assert state.noise is not None and state.best is not None
    j = judge_paired(state.best, state.noise, 1.01, [(1.015, 1.0), (1.0125, 1.0)], 90, SETTINGS)
    assert j.decision is Decision.KEEP
    after = state.after_keep(j, trial_id="t0005", commit="d" * 40)
    assert after.best is not None
    assert after.best.val_bpb == pytest.approx(1.0)  # min(bar, 1.0125): the bar stays
    assert after.best.code_lines == 90 and after.best.commit == "d" * 40
    # A second simplification must still be within the noise of the ORIGINAL bar, not 1.0125's.
    assert judge(after.best, state.noise, [1.025, 1.025], 80, SETTINGS).decision is Decision.DISCARD


def test_code_lines_ignore_blank_lines_and_comments_but_not_strings() -> None:
    source = '# header\n\nx = 1  # trailing\n\n    \ns = """\n# not a comment\n"""\n# end\n'
    assert code_lines(source) == 4  # x = 1, and the three lines of the string
    assert code_lines("def f(:\n  # broken\n  pass\n") == 2  # fallback for text that does not tokenize


# --------------------------------------------------------------------------- replay


def row(trial_id: str, kind: str, decision: Decision, val: float | None, lines: int = 100) -> JudgedRow:
    return JudgedRow(
        trial_id=trial_id,
        kind=kind,
        decision=decision,
        val_bpb=val,
        candidate_commit=trial_id.ljust(40, "0"),
        code_lines=lines,
    )


def test_replay_rebuilds_the_state_from_recorded_decisions() -> None:
    rows = [
        row("t0000", "baseline", Decision.BASELINE, 1.00),
        row("t0001", "baseline", Decision.CRASH, None),  # a failed baseline run does not count
        row("t0002", "baseline", Decision.BASELINE, 1.02),
        row("t0003", "baseline", Decision.BASELINE, 0.98),
        row("t0004", "candidate", Decision.KEEP, 0.90, 95),
        row("t0005", "candidate", Decision.DISCARD, 0.80),  # recorded as a discard: stays a discard
        row("t0006", "candidate", Decision.CRASH, None),
    ]
    state = replay(rows, SETTINGS)
    assert state.noise is not None and state.noise.n == 3
    assert state.best is not None
    assert (state.best.trial_id, state.best.val_bpb, state.best.code_lines) == ("t0004", 0.90, 95)


def test_replay_closes_a_short_baseline_at_the_first_candidate() -> None:
    rows = [
        row("t0000", "baseline", Decision.BASELINE, 1.0),
        row("t0001", "baseline", Decision.BASELINE, 1.0),
    ]
    more = SETTINGS.model_copy(update={"baseline_repeats": 5})
    assert not replay(rows, more).ready  # still collecting
    rows.append(row("t0002", "candidate", Decision.DISCARD, 1.1))
    state = replay(rows, more)
    assert state.ready and state.noise is not None and state.noise.n == 2
