"""The escape bound of the full-coverage check, computed from the profile constants, stays below the
judge's noise floor, and the bound's formula holds when measured.

Property: a graph that leaks at a fraction f of the scored (row, position) pairs, chosen in any way
from the tokens it sees, escapes one evaluation with probability at most exp(-P * f * N) (P shadow
passes, N scored rows; sandbox/incontainer/probes.py). The largest leak that escapes with probability above 1e-3
is f_esc = ln(1000) / (P * N); a content lottery at f_esc gains about f_esc * val_bpb. For every
profile that gain must stay below the measured noise floor recorded in prepare.py, so a profile change
(fewer rows, fewer passes) that opens room for an undetectable gain fails here. The run canary's rate
must be caught with probability at least 1 - 1e-6 by the causality pass alone.
Attack defeated: a sparse content lottery whose expected gain hides in the judge's noise.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import prepare
from harness import canary_train
from sandbox.incontainer import probes

RECORDED = re.compile(r"#\s+noise_floor_bpb (?P<floor>.*?) ; baseline_bpb (?P<base>.*)")


def _recorded() -> tuple[dict[str, float], dict[str, float]]:
    """The measured noise floor and baseline val_bpb per profile, from prepare.py's comment line."""
    match = RECORDED.search(Path(prepare.__file__).read_text())
    assert match, "prepare.py no longer records `# noise_floor_bpb ... ; baseline_bpb ...`"

    def table(text: str) -> dict[str, float]:
        return {k: float(v) for k, v in (item.split("=") for item in text.split())}

    return table(match["floor"]), table(match["base"])


@pytest.mark.parametrize("name", sorted(prepare.PROFILES))
def test_the_largest_escapable_lottery_gain_is_below_the_noise_floor(name: str) -> None:
    floors, baselines = _recorded()
    assert set(floors) == set(prepare.PROFILES) == set(baselines), "a profile without a recorded floor"
    profile = prepare.PROFILES[name]
    n_rows = profile.eval_tokens // profile.max_seq_len
    f_esc = probes.escapable_fraction(n_rows)
    assert probes.escape_probability(f_esc, n_rows) == pytest.approx(probes.ESCAPE_TARGET)
    gain = f_esc * baselines[name]  # a lottery's leaking positions gain the mean loss
    assert gain < floors[name], f"{name}: {gain:.5f} bpb can escape with p > 1e-3, floor {floors[name]}"


@pytest.mark.parametrize("name", sorted(prepare.PROFILES))
def test_the_run_canary_is_caught_with_probability_one_minus_1e_6(name: str) -> None:
    profile = prepare.PROFILES[name]
    n_rows = profile.eval_tokens // profile.max_seq_len
    # half the nominal rate: the share of positions a hash picks in real text varies around it
    assert probes.escape_probability(canary_train.RATE / 2, n_rows, passes=1) <= 1e-6


def test_the_measured_miss_rate_agrees_with_the_formula() -> None:
    """Monte Carlo with the real checks: a one-step leak at a fraction f of positions, chosen by a hash
    of the tokens, is missed at about the rate prod_i (1 - f_i)^P, never above exp(-P * f * N)."""
    n, b, t, v = 24, 8, 16, 61
    table = torch.randn(v, v, generator=torch.Generator().manual_seed(0))
    rows = torch.randint(0, v, (n, t + 1), generator=torch.Generator().manual_seed(2))

    def fires(x: torch.Tensor) -> torch.Tensor:
        h = (x * 31 + torch.cat([x[:, :1], x[:, :-1]], dim=1) * 17) % 97
        return (h < 3) & (torch.arange(x.shape[1]) < x.shape[1] - 1)

    def leaky(x: torch.Tensor) -> torch.Tensor:
        out = table[x].cumsum(dim=1)
        return torch.where(fires(x)[..., None], out + 5 * table[torch.roll(x, -1, dims=1)], out)

    per_row = fires(rows[:, :-1]).sum(dim=1).double() / (t - 1)  # f_i over the T-1 leakable positions
    exact = float(((1 - per_row) ** probes.COVERAGE_PASSES).prod())
    bound = probes.escape_probability(float(per_row.mean()), n)
    assert 0.05 < exact <= bound < 0.9  # a regime where misses are frequent enough to count
    recorder = probes.TargetRecorder(leaky, rows, b)
    for i in range(0, n, b):
        recorder(rows[i : i + b, :-1])
    trials = 400
    missed = sum(
        probes.run_coverage(leaky, rows, recorder.logprobs, probes.draw_plan(n, b, t), v)[1] is None
        for _ in range(trials)
    )
    sigma = math.sqrt(exact * (1 - exact) / trials)
    assert abs(missed / trials - exact) < 4 * sigma, (missed, trials, exact)
    assert missed / trials < bound + 4 * sigma
