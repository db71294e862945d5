"""Behavioural probes: the graph must be causal, treat batch rows independently, and be deterministic.

The signature check says what a graph's shapes are; these probes check what it computes, on the very
validation rows the metric scores. A graph that fails one is rejected, not scored.

What is deliberate:
  * The probe batch IS one of the scoring batches (rows ``start .. start+B`` of ``eval_rows``), and every
    random choice (which batch, the causal cut of each row, the permutation, the random tokens) is drawn
    afresh per evaluation from ``secrets`` and only recorded in the report afterwards. A graph cannot
    tell a probe from a scoring call except by the perturbation itself, and cannot precompute where the
    perturbation will be.
  * Outputs are compared as log-probabilities (``log_softmax`` in float32), in nats. That comparison is
    shift-invariant (adding a constant to a position's logits changes nothing scored), and it bounds the
    damage directly: if no log-probability moves by more than ``tol`` nats, a leak hidden below the
    tolerance can improve the scored cross-entropy by at most ``tol`` nats per token, i.e. at most
    ``tol / (ln 2 * bytes per token)`` bits per byte (about 4e-5 bpb at 1e-4 nats), far below the
    judge's noise floor.
  * ``TIGHT_NATS`` (1e-4) applies wherever the honest computation is bit-for-bit reproducible: the same
    batch shape run again, with other rows or later tokens changed. Per-row and per-position kernels
    (GEMMs over the feature dimension, masked attention whose masked weights are exactly 0) do not
    depend on the values elsewhere in the batch, so an honest graph reproduces these positions exactly
    on CPU and CUDA alike; the tolerance only absorbs float32 rounding of ``log_softmax`` itself.
  * A row run alone (B=1) goes through differently shaped kernels, so it is compared with a looser,
    precision-aware tolerance: ``max(1e-3, 8 * eps * max|logit|)`` where eps is the machine epsilon of
    the lowest-precision float dtype in the graph. This is a consistency check (the same function at
    every batch size); the security-relevant row check is the tight, same-shape one.
  * Causality cuts one position per row (a different, secret one per row and per perturbation): logits
    at positions <= t must not move when tokens after t are replaced, once by uniform random tokens
    and once by another real row's continuation (so the suffix looks like text). A leak that only
    fires at a few positions escapes with probability (1 - k/T)^(2B), but it is then worth only
    about k/T of its per-position gain.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from prepare import all_finite

log = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
TIGHT_NATS = 1e-4
ALONE_FLOOR_NATS = 1e-3


@dataclass(frozen=True)
class ProbeResult:
    passed: bool
    detail: str


@dataclass(frozen=True)
class ProbePlan:
    """Every secret choice of one evaluation's probes; written to the report once the probes have run."""

    batch_start: int  # first row (in eval_rows) of the scoring batch the probes reuse
    batch_size: int
    random_cuts: list[int]  # per row: position t; tokens after t become uniform random tokens
    natural_cuts: list[int]  # per row: position t; tokens after t come from the next row of the batch
    permutation: list[int]  # row order of the permuted batch
    kept_rows: list[int]  # rows left as they are while all others are replaced by random tokens
    alone_row: int  # the row also run with B=1
    token_seed: int  # seeds the generator of the random replacement tokens
    extra: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def draw_plan(n_rows: int, batch_size: int, seq_len: int) -> ProbePlan:
    """Draw the probe positions with ``secrets`` (unpredictable to the candidate, fresh per run)."""
    rng = secrets.SystemRandom()
    full_batches = max(1, n_rows // batch_size)
    start = rng.randrange(full_batches) * batch_size
    size = min(batch_size, n_rows - start)
    perm = list(range(size))
    rng.shuffle(perm)
    if size > 1 and perm == sorted(perm):
        perm = perm[1:] + perm[:1]  # a permutation that moves every row
    kept = sorted(rng.sample(range(size), max(1, size // 2)))
    return ProbePlan(
        batch_start=start,
        batch_size=size,
        random_cuts=[rng.randrange(seq_len - 1) for _ in range(size)],
        natural_cuts=[rng.randrange(seq_len - 1) for _ in range(size)],
        permutation=perm,
        kept_rows=kept,
        alone_row=rng.randrange(size),
        token_seed=secrets.randbits(62),
    )


def _logprobs(fn: LogitsFn, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(fn(x).float(), dim=-1)


def _prefix_mask(cuts: list[int], seq_len: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool: True at positions <= cut of each row."""
    positions = torch.arange(seq_len, device=device)
    return positions[None, :] <= torch.tensor(cuts, device=device)[:, None]


def _max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    # (B, T): worst vocabulary entry at each position. In place: one logits-sized temporary, not two
    # (a fresh evaluator's heap may still page-fault them in; see evaluate.retain_freed_memory).
    d = torch.sub(a, b).abs_().amax(dim=-1)
    if where is not None:
        d = d[where]
    worst = float(d.max()) if d.numel() else 0.0
    return math.inf if math.isnan(worst) else worst  # NaN where the reference was finite: a failure


def run_probes(
    fn: LogitsFn,
    x: torch.Tensor,
    plan: ProbePlan,
    vocab_size: int,
    low_precision_eps: float,
    *,
    on_reference: Callable[[torch.Tensor], None] | None = None,
) -> tuple[dict[str, ProbeResult], dict[str, float]]:
    """Run every probe on the batch ``x`` (B, T) int64; return results and the measured max deviations.

    A probe that cannot be evaluated because an earlier one showed the logits unusable (non-finite) is
    reported as not passed with that reason, so the first failure names the cause. ``on_reference``
    gets the logits of the reference pass (the first call, on ``x`` unchanged), e.g. to score that batch
    with them instead of running it once more.
    """
    results: dict[str, ProbeResult] = {}
    measured: dict[str, float] = {}
    device = x.device
    B, T = x.shape
    gen = torch.Generator(device="cpu").manual_seed(plan.token_seed)

    def random_tokens(*shape: int) -> torch.Tensor:
        return torch.randint(0, vocab_size, shape, generator=gen).to(device)

    ref_logits = fn(x)
    if on_reference is not None:
        on_reference(ref_logits)
    finite = all_finite(ref_logits)
    results["finite"] = ProbeResult(
        finite, "all logits finite" if finite else "the graph produced NaN or inf logits"
    )
    if not finite:
        return results, measured
    scale = float(ref_logits.float().abs().max())
    ref = torch.log_softmax(ref_logits.float(), dim=-1)
    del ref_logits

    d = measured["determinism"] = _max_diff(ref, _logprobs(fn, x))
    results["determinism"] = ProbeResult(
        d <= TIGHT_NATS, f"same input twice: max |d log p| = {d:.3g} nats (tolerance {TIGHT_NATS:g})"
    )

    worst = 0.0
    for name, cuts, make_suffix in (
        ("random", plan.random_cuts, lambda: random_tokens(B, T)),
        ("natural", plan.natural_cuts, lambda: x.roll(shifts=-1, dims=0)),
    ):
        mask = _prefix_mask(cuts, T, device)
        perturbed = torch.where(mask, x, make_suffix())
        d = measured[f"causality_{name}"] = _max_diff(ref, _logprobs(fn, perturbed), mask)
        worst = max(worst, d)
    results["causality"] = ProbeResult(
        worst <= TIGHT_NATS,
        f"tokens after a secret position t replaced (random and real-text suffixes, "
        f"{2 * B} cuts): logits at positions <= t moved by up to {worst:.3g} nats (tolerance {TIGHT_NATS:g})",
    )

    perm = torch.tensor(plan.permutation, device=device)
    d_perm = measured["rows_permuted"] = _max_diff(ref[perm], _logprobs(fn, x[perm]))
    kept = torch.zeros(B, dtype=torch.bool, device=device)
    kept[torch.tensor(plan.kept_rows, device=device)] = True
    mixed = torch.where(kept[:, None], x, random_tokens(B, T))
    d_mix = measured["rows_replaced"] = _max_diff(ref[kept], _logprobs(fn, mixed)[kept])
    alone_tol = max(ALONE_FLOOR_NATS, 8 * low_precision_eps * max(scale, 1.0))
    r = plan.alone_row
    d_alone = measured["row_alone"] = _max_diff(ref[r : r + 1], _logprobs(fn, x[r : r + 1]))
    ok = d_perm <= TIGHT_NATS and d_mix <= TIGHT_NATS and d_alone <= alone_tol
    results["row_independence"] = ProbeResult(
        ok,
        f"rows permuted: {d_perm:.3g} nats, other rows replaced: {d_mix:.3g} nats (tolerance "
        f"{TIGHT_NATS:g}); row alone (B=1) vs in the batch: {d_alone:.3g} nats (tolerance {alone_tol:.3g})",
    )
    log.info("probes: %s", {k: round(v, 8) for k, v in measured.items()})
    return results, measured
