"""The judge's statistics: pooled run-to-run noise and Student's t, in the standard library alone.

Pure functions, no policy: harness/judge.py decides what to keep with them. The t distribution is
computed here (regularized incomplete beta, bisection for the quantile) so the controller needs no
scipy; `t_quantile` is cached because the judge asks for the same few (p, df) again and again.
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)


class NoiseFloor(BaseModel):
    """Run-to-run noise: the baseline's mean, and the pooled standard deviation of every repeated run."""

    model_config = ConfigDict(frozen=True)

    n: int  # baseline runs
    mean: float  # their mean
    std: float  # pooled standard deviation of one run (docs/ARCHITECTURE.md, the judge)
    threshold: float  # the screening threshold, max(noise_k * std, min_delta)
    df: int = 0  # degrees of freedom of `std`
    runs: int = 0  # measurements pooled (0: the baseline runs only)


def noise_floor(values: Sequence[float], *, noise_k: float, min_delta: float) -> NoiseFloor:
    """The noise floor from repeated runs of one train.py with different seeds."""
    if not values:
        raise ValueError("the noise floor needs at least one baseline run")
    return pooled_noise([values], baseline=values, noise_k=noise_k, min_delta=min_delta)


def pooled_noise(
    groups: Iterable[Sequence[float]], *, baseline: Sequence[float], noise_k: float, min_delta: float
) -> NoiseFloor:
    """The pooled noise of groups of repeated runs (each group: one train.py), with the baseline's mean."""
    if not baseline:
        raise ValueError("the noise floor needs at least one baseline run")
    squares, df, runs = 0.0, 0, 0
    for values in groups:
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            df += len(values) - 1
        runs += len(values)
    std = math.sqrt(squares / df) if df else 0.0
    return NoiseFloor(
        n=len(baseline),
        mean=statistics.fmean(baseline),
        std=std,
        threshold=max(noise_k * std, min_delta),
        df=df,
        runs=runs,
    )


# --------------------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)
def t_quantile(p: float, df: int) -> float:
    """The `p` quantile of Student's t with `df` >= 1 degrees of freedom (bisection on `t_cdf`)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0
