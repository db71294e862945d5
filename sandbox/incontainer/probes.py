"""Behavioural checks on every scored row: the graph must be causal, treat rows independently, and be
deterministic. A graph that fails one is rejected, not scored.

What a check sees. The scoring pass runs every scoring batch once; from its logits the evaluator keeps
one number per scored (row, position), the log-probability of the true next token (``target_logprobs``,
(N, T) floats: no B x T x V tensor is kept). Then ``COVERAGE_PASSES`` shadow passes run over EVERY
scoring row again, each row with its own secret cut c: tokens after c are replaced (by uniform random
tokens, or by another row's tokens so the suffix looks like text; the first replaced token always
differs from the original). At positions <= c nothing the row may depend on has changed, so each of
those positions must reproduce its scoring-pass log-probability within ``TIGHT_NATS``:
  * pass ``causality``: the scoring batches as they were (same rows, same order), every row cut;
  * pass ``rows``: all N rows shuffled into new batches by a secret global permutation, every row cut
    afresh. A row's batch-mates are now other rows, at other batch positions, their own suffixes
    replaced: any dependence on the rest of the batch moves it.
Before scoring, one secret scoring batch is also run twice (``determinism``) and one of its rows alone,
B=1 (``row_alone``, a looser, precision-aware tolerance, as other batch shapes run other kernels).

Why the target log-probability is enough: val_bpb is a sum over scored positions of exactly that
number, so a leak that never moves it cannot change the score; and any leak that improves it at a
checked position moves it (the leaked token was replaced). It is shift-invariant, and a deviation below
``TIGHT_NATS`` is worth at most 1e-4 nats per token (about 3e-5 bpb on either profile). Honest graphs
reproduce it exactly: per-row kernels (GEMMs over features, masked attention whose masked weights are
exactly 0) of the same batch shape do not depend on the values in other rows or after the mask, on CPU
and CUDA alike.

The bound (``escape_probability``, ``escapable_gain``; tested in
tests/test_evaluator_bound_keeps_escapable_gain_below_the_noise_floor.py, numbers in SECURITY.md). A
graph leaks at a set of (row, position) pairs chosen in any way from the tokens it sees, a fraction
f_i of row i's T-1 leakable positions (the last position's target is not in the input). A leak at
position t reads a token after t; a pass's cut c_i of row i (uniform over 0..T-2, secret, independent
across rows and passes) catches it when it lands on a leaking position t (then the token it reads is
replaced and its log-probability moves). A leak that reads further ahead is caught by more cuts, so the
one-step leak is the worst case. With P passes:
    P(miss) = prod_i (1 - f_i)^P <= exp(-P * sum_i f_i) = exp(-P * f * N),
N scored rows, f the leaking fraction of all pairs. An evaluation is missed with probability above
``ESCAPE_TARGET`` = 1e-3 only if f < f_esc = ln(1000) / (P * N). What that is worth depends on where the
leak is placed:
  * content lottery (trigger a hash of the tokens, unrelated to how hard the target is): each leaking
    position gains on average the honest loss there, so gain <= f_esc * val_bpb;
  * loss-targeted (the graph peeks, sees its own honest prediction is poor, leaks only there): gain <=
    the honest loss of the top f_esc of positions. That is larger, and is reported beside it.
A leak at one row's positions only (a row lottery) or at every position of a few rows is caught with
certainty whenever any leaking row is scored, since every row is cut in every pass.

What else is deliberate:
  * Every secret (which batch is run twice, cuts, permutation, suffix kinds, donors, the random tokens)
    comes from one seed drawn with ``secrets`` afresh per evaluation; the plan is written to the report
    only after the checks ran. A graph cannot tell a shadow call from a scoring call except by the
    perturbation itself, and cannot precompute where it will be.
  * Comparisons are per batch and on the batch's device; only (N, T) target log-probabilities and a
    scalar per batch outlive a batch.
  * NaN where the reference was finite counts as an infinite deviation: a failure.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from prepare import all_finite

log = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
TIGHT_NATS = 1e-4
ALONE_FLOOR_NATS = 1e-3
COVERAGE_PASSES = 2  # shadow passes over every scored row: "causality" then "rows"
ESCAPE_TARGET = 1e-3  # the per-evaluation miss probability the bound is stated at
PASS_NAMES = ("causality", "rows")


@dataclass(frozen=True)
class ProbeResult:
    passed: bool
    detail: str


@dataclass(frozen=True)
class PassPlan:
    """One shadow pass: the row order it runs in (B at a time) and each row's secret cut and suffix."""

    name: str
    order: list[int]  # row ids in run order; consecutive groups of batch_size form the shadow batches
    cuts: list[int]  # per row id: the last position kept; tokens after it are replaced
    natural: list[bool]  # per row id: suffix from a donor row (True) or uniform random tokens
    donors: list[int]  # per row id: the row whose tokens fill a natural suffix (never itself)


@dataclass(frozen=True)
class ProbePlan:
    """Every secret choice of one evaluation's checks; written to the report once they have run."""

    n_rows: int
    batch_size: int
    seq_len: int
    seed: int  # from ``secrets``: seeds the generator every choice below (and the random tokens) came from
    check_batch: int  # first row of the scoring batch run twice (determinism) and reused for scoring
    alone_row: int  # row of that batch (0-based within it) also run with B=1
    passes: list[PassPlan]

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def draw_plan(n_rows: int, batch_size: int, seq_len: int, passes: int = COVERAGE_PASSES) -> ProbePlan:
    """Draw every secret of one evaluation from a fresh ``secrets`` seed."""
    if n_rows < 1 or batch_size < 1 or seq_len < 2:
        raise ValueError(f"nothing to check: {n_rows} rows of {seq_len} tokens, batch {batch_size}")
    seed = secrets.randbits(62)
    gen = torch.Generator().manual_seed(seed)

    def randint(high: int, n: int) -> list[int]:
        return torch.randint(0, high, (n,), generator=gen).tolist()

    n_batches = -(-n_rows // batch_size)
    check_batch = randint(n_batches, 1)[0] * batch_size
    alone_row = randint(min(batch_size, n_rows - check_batch), 1)[0]
    plans = []
    for k in range(passes):
        name = PASS_NAMES[k] if k < len(PASS_NAMES) else f"rows_{k}"
        order = list(range(n_rows)) if k == 0 else torch.randperm(n_rows, generator=gen).tolist()
        # donor: any other row (offset 1..N-1), so a natural suffix never copies the row's own text
        offsets = randint(max(n_rows - 1, 1), n_rows)
        donors = [(r + 1 + o) % n_rows for r, o in zip(range(n_rows), offsets, strict=True)]
        natural = [bool(b) for b in randint(2, n_rows)]
        plans.append(PassPlan(name, order, randint(seq_len - 1, n_rows), natural, donors))
    return ProbePlan(n_rows, batch_size, seq_len, seed, check_batch, alone_row, plans)


# ------------------------------------------------------------------------------------ the bound


def escape_probability(leak_fraction: float, n_rows: int, passes: int = COVERAGE_PASSES) -> float:
    """Upper bound on P(one evaluation misses a leak at ``leak_fraction`` of all scored (row, position)
    pairs): exp(-passes * f * N). Holds however the pairs are chosen (module docstring)."""
    return math.exp(-passes * leak_fraction * n_rows)


def escapable_fraction(n_rows: int, passes: int = COVERAGE_PASSES, target: float = ESCAPE_TARGET) -> float:
    """The largest leak fraction that escapes one evaluation with probability above ``target``."""
    return math.log(1 / target) / (passes * n_rows)


def escapable_gain(leaking_fraction: float, mean_gain_nats: float, bytes_per_token: float) -> float:
    """val_bpb gain of leaking at ``leaking_fraction`` of scored positions, each worth ``mean_gain_nats``."""
    return leaking_fraction * mean_gain_nats / (math.log(2) * bytes_per_token)


# ------------------------------------------------------------------------------------ the checks


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each target under (B, T, V) logits, in float32 (no (B, T, V) result)."""
    lg = logits.float()
    picked = lg.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(lg, dim=-1)


def _logprobs(fn: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(fn(x).float(), dim=-1)


def _max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Largest |a - b| (at ``where``); NaN in the difference counts as infinite. In place: one temporary."""
    d = torch.sub(a, b).abs_()
    if d.dim() == 3:
        d = d.amax(dim=-1)
    if where is not None:
        d = d[where]
    worst = float(d.max()) if d.numel() else 0.0
    return math.inf if math.isnan(worst) else worst


def check_batch(
    fn: LogitsFn, x: torch.Tensor, plan: ProbePlan, low_precision_eps: float
) -> tuple[dict[str, ProbeResult], dict[str, float], torch.Tensor | None]:
    """Finiteness, determinism and the row-alone check on one scoring batch ``x`` (B, T).

    Returns the results, the measured deviations, and the batch's first logits (the caller may score
    the batch with them: the determinism check has just shown a second call gives the same answer), or
    None when the logits were not finite.
    """
    results: dict[str, ProbeResult] = {}
    measured: dict[str, float] = {}
    logits = fn(x)
    finite = all_finite(logits)
    results["finite"] = ProbeResult(
        finite, "all logits finite" if finite else "the graph produced NaN or inf logits"
    )
    if not finite:
        return results, measured, None
    scale = float(logits.float().abs().max())
    ref = torch.log_softmax(logits.float(), dim=-1)
    with torch.inference_mode():
        second = fn(x)
    d = _max_diff(ref, torch.log_softmax(second.float(), dim=-1))
    note = ""
    if d > TIGHT_NATS:  # a third call tells a one-off numeric glitch of one call from a graph that varies
        third = _logprobs(fn, x)
        d_23 = _max_diff(torch.log_softmax(second.float(), dim=-1), third)
        d_13 = _max_diff(ref, third)
        if min(d_23, d_13) <= TIGHT_NATS:
            measured["determinism_retried"] = d
            note = f"; one call of three differed by {d:.3g} nats (a one-off glitch: the other two agree)"
            if d_23 <= TIGHT_NATS:  # the first call was the odd one: score with the second
                logits, ref = second, torch.log_softmax(second.float(), dim=-1)
            d = min(d_23, d_13)
    del second
    measured["determinism"] = d
    results["determinism"] = ProbeResult(
        d <= TIGHT_NATS,
        f"same input twice: max |d log p| = {d:.3g} nats (tolerance {TIGHT_NATS:g}){note}",
    )
    r = min(plan.alone_row, x.shape[0] - 1)
    alone_tol = max(ALONE_FLOOR_NATS, 8 * low_precision_eps * max(scale, 1.0))
    d_alone = measured["row_alone"] = _max_diff(ref[r : r + 1], _logprobs(fn, x[r : r + 1]))
    results["row_alone"] = ProbeResult(
        d_alone <= alone_tol,
        f"a row run alone (B=1) vs in its batch: {d_alone:.3g} nats (tolerance {alone_tol:.3g})",
    )
    return results, measured, logits


class TargetRecorder:
    """Wraps the scoring ``logits_fn``: keeps each scored position's target log-probability.

    ``prepare.evaluate_bpb`` calls it on rows[i : i + B, :-1] for i = 0, B, 2B, ... in order; the
    recorder checks that it is handed exactly those rows and fills ``self.logprobs`` (N, T).
    """

    def __init__(self, fn: LogitsFn, rows: torch.Tensor, batch_size: int) -> None:
        self.fn, self.rows, self.batch_size = fn, rows, batch_size
        self.logprobs = torch.full(
            (rows.shape[0], rows.shape[1] - 1), math.nan, dtype=torch.float32, device=rows.device
        )
        self.next_row = 0

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        i = self.next_row
        chunk = self.rows[i : i + self.batch_size]
        if xb.shape != chunk[:, :-1].shape or not torch.equal(xb, chunk[:, :-1]):
            raise RuntimeError(f"the scoring pass was not called on rows {i}.. in order")  # evaluator bug
        logits = self.fn(xb)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.dim() == 3:
            if tuple(logits.shape[:2]) == tuple(xb.shape):
                self.logprobs[i : i + xb.shape[0]] = target_logprobs(logits, chunk[:, 1:].to(logits.device))
        self.next_row = i + xb.shape[0]
        return logits


def _shadow_batches(
    rows: torch.Tensor, pp: PassPlan, batch_size: int, vocab_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(row ids, shadow input (b, T), keep mask (b, T)) per shadow batch of one pass, on rows' device."""
    device = rows.device
    T = rows.shape[1] - 1
    cuts = torch.tensor(pp.cuts, device=device)
    natural = torch.tensor(pp.natural, device=device)
    donors = torch.tensor(pp.donors, device=device)
    order = torch.tensor(pp.order, device=device)
    positions = torch.arange(T, device=device)
    for start in range(0, len(pp.order), batch_size):
        ids = order[start : start + batch_size]
        x = rows[ids, :-1]
        noise = torch.randint(0, vocab_size, tuple(x.shape), generator=gen).to(device)
        fill = torch.where(natural[ids][:, None], rows[donors[ids], :-1], noise)
        keep = positions[None, :] <= cuts[ids][:, None]
        shadow = torch.where(keep, x, fill)
        # the first replaced token must differ, or a one-step leak at the cut would read the same token
        at = (cuts[ids] + 1).unsqueeze(1)
        original, placed = x.gather(1, at), shadow.gather(1, at)
        bump = torch.randint(1, vocab_size, tuple(at.shape), generator=gen).to(device)
        shadow.scatter_(1, at, torch.where(placed == original, (original + bump) % vocab_size, placed))
        yield ids, shadow, keep


def run_coverage(
    fn: LogitsFn, rows: torch.Tensor, reference: torch.Tensor, plan: ProbePlan, vocab_size: int
) -> tuple[dict[str, float], tuple[str, int, int, float] | None]:
    """Run every shadow pass over all rows (N, T+1); compare with the scoring pass's ``reference`` (N, T).

    Returns the largest deviation of each pass (nats) and the first failure found as (pass, row id,
    position, deviation), or None. Stops at the first failing batch: the verdict is then known.
    """
    gen = torch.Generator().manual_seed(plan.seed ^ 0x5EED)
    worst: dict[str, float] = {}
    targets = rows[:, 1:]

    def deviation(got: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        d = torch.sub(got, ref).abs_()
        return torch.where(keep, torch.nan_to_num(d, nan=math.inf), torch.zeros_like(d))

    def shadow_logprobs(ids: torch.Tensor, shadow: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return target_logprobs(fn(shadow), targets[ids])

    for pp in plan.passes:
        worst[pp.name] = 0.0
        for ids, shadow, keep in _shadow_batches(rows, pp, plan.batch_size, vocab_size, gen):
            d = deviation(shadow_logprobs(ids, shadow), reference[ids], keep)
            batch_worst = float(d.max())
            if batch_worst > TIGHT_NATS:
                # Once more before a verdict: a leak moves the same positions every time, while a rare
                # one-off glitch of one call's numerics (seen once in a few hundred trials on CPU) does
                # not. The shadow batch is run again and the rows' scoring batches recomputed; the rows
                # fail only if the shadow disagrees with both references. Costs nothing unless it fires.
                again = shadow_logprobs(ids, shadow)
                fresh = _recompute_reference(fn, rows, ids, plan.batch_size)
                d = torch.minimum(deviation(again, reference[ids], keep), deviation(again, fresh, keep))
                worst[f"{pp.name}_retried"] = max(worst.get(f"{pp.name}_retried", 0.0), batch_worst)
                batch_worst = float(d.max())
            worst[pp.name] = max(worst[pp.name], batch_worst)
            if batch_worst > TIGHT_NATS:
                flat = int(d.argmax())
                row, pos = int(ids[flat // d.shape[1]]), flat % d.shape[1]
                return worst, (pp.name, row, pos, batch_worst)
    return worst, None


def _recompute_reference(
    fn: LogitsFn, rows: torch.Tensor, ids: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(len(ids), T) target log-probabilities of rows ``ids``, each run again in its own scoring batch."""
    out = torch.empty(len(ids), rows.shape[1] - 1, dtype=torch.float32, device=rows.device)
    starts = sorted({int(i) // batch_size * batch_size for i in ids})
    for start in starts:
        chunk = rows[start : start + batch_size]
        with torch.inference_mode():
            logprobs = target_logprobs(fn(chunk[:, :-1]), chunk[:, 1:])
        for k, i in enumerate(ids.tolist()):
            if start <= i < start + chunk.shape[0]:
                out[k] = logprobs[i - start]
    return out


def coverage_results(
    worst: dict[str, float], failure: tuple[str, int, int, float] | None, plan: ProbePlan
) -> dict[str, ProbeResult]:
    """The ``causality`` and ``row_independence`` results from ``run_coverage``'s measurements."""
    n = plan.n_rows
    failed_pass = failure[0] if failure else None
    where = f" (row {failure[1]}, position {failure[2]}, {failure[3]:.3g} nats)" if failure else ""
    results: dict[str, ProbeResult] = {}
    if "causality" in worst:
        d = worst["causality"]
        results["causality"] = ProbeResult(
            failed_pass != "causality",
            f"every one of {n} scored rows cut at a secret position, tokens after it replaced: the "
            f"target log-probability at positions <= the cut moved by up to {d:.3g} nats "
            f"(tolerance {TIGHT_NATS:g}){where if failed_pass == 'causality' else ''}",
        )
    rows_passes = [k for k in worst if k != "causality" and not k.endswith("_retried")]
    if rows_passes:
        d = max(worst[k] for k in rows_passes)
        failed = failed_pass in rows_passes
        results["row_independence"] = ProbeResult(
            not failed,
            f"all {n} rows shuffled into new batches (secret permutation), each cut afresh: the target "
            f"log-probability at positions <= the cut moved by up to {d:.3g} nats (tolerance "
            f"{TIGHT_NATS:g}){where if failed else ''}",
        )
    return results
