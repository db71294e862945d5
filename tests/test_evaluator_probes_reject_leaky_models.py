"""The probes reject graphs that look ahead, mix batch rows, are nondeterministic or emit NaN.

Property: a graph passes the probes only if, on real validation rows at secret positions, its
log-probabilities at positions <= t ignore every token after t, each row's output ignores the other
rows (permuted, replaced) and the batch size, and the same input gives the same output. A graph
that fails any of these is rejected and not scored.
Attacks defeated: non-causal attention (reading the token being predicted), mixing rows (the next
row continues the same text), counting calls or drawing state to answer probes differently from
scoring, and NaN logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sandbox import probes
from sandbox.evaluate import evaluate
from tests.evil_models import FAST_PROFILE, exported

B, T, V = 8, 16, 32
EPS32 = torch.finfo(torch.float32).eps


@pytest.mark.parametrize(
    ("model", "check"),
    [
        ("non_causal", "probe:causality"),
        ("row_mixing", "probe:row_independence"),
        ("nan_logits", "probe:finite"),
    ],
)
def test_leaky_exported_models_are_rejected_by_their_probe(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, model: str, check: str
) -> None:
    report = evaluate(FAST_PROFILE, exported(model, tmp_path_factory.getbasetemp()), tiny_data)
    assert report["status"] == "rejected" and report["val_bpb"] is None
    assert report["check"] == check, report["reason"]
    assert report["probes"][check.split(":")[1]]["passed"] is False
    assert report["probe_plan"]["batch_size"] == FAST_PROFILE.eval_batch_size  # recorded after the fact
    assert "score" not in report["timings"]


# --- the probes themselves, on hand-written logits functions (no export, milliseconds) ---

TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0))


def causal(x: torch.Tensor) -> torch.Tensor:
    """Prefix mean of per-token vectors: causal, per-row, deterministic."""
    h = TABLE[x].cumsum(dim=1)
    return h / torch.arange(1, x.shape[1] + 1)[None, :, None]


def peek_next(x: torch.Tensor) -> torch.Tensor:
    out = causal(x)
    out[:, :-1] += TABLE[x[:, 1:]]
    return out


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    out = causal(x)
    return out + out.mean(dim=0, keepdim=True)


def knows_batch_size(x: torch.Tensor) -> torch.Tensor:
    return causal(x) + (0.5 if x.shape[0] == 1 else 0.0) * TABLE[x]


def rows() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def run(fn: probes.LogitsFn, plan: probes.ProbePlan | None = None) -> dict[str, probes.ProbeResult]:
    results, _ = probes.run_probes(fn, rows(), plan or probes.draw_plan(B, B, T), V, EPS32)
    return results


def test_honest_function_passes_every_probe() -> None:
    results = run(causal)
    assert set(results) == {"finite", "determinism", "causality", "row_independence"}
    assert all(r.passed for r in results.values()), results


def test_looking_one_token_ahead_fails_causality() -> None:
    results = run(peek_next)
    assert not results["causality"].passed
    assert results["row_independence"].passed  # the failure is attributed to the right probe


def test_a_leak_at_one_position_is_caught_when_a_cut_lands_on_it() -> None:
    def leak_at_5(x: torch.Tensor) -> torch.Tensor:
        out = causal(x)
        out[:, 5] += TABLE[x[:, 6]]
        return out

    plan = probes.draw_plan(B, B, T)
    plan = probes.ProbePlan(**{**plan.to_json(), "random_cuts": [5] * B})  # type: ignore[arg-type]
    assert not run(leak_at_5, plan)["causality"].passed


def test_mixing_rows_fails_row_independence() -> None:
    results = run(batch_mean)
    assert not results["row_independence"].passed
    assert "other rows replaced" in results["row_independence"].detail


def test_behaving_differently_alone_fails_row_independence() -> None:
    assert not run(knows_batch_size)["row_independence"].passed


def test_answers_that_change_between_calls_fail_determinism() -> None:
    calls = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return causal(x) + 1e-2 * len(calls) * TABLE[x]

    assert not run(counting)["determinism"].passed


def test_nan_logits_fail_first_and_stop_the_probes() -> None:
    results = run(lambda x: causal(x) * math.nan)
    assert list(results) == ["finite"] and not results["finite"].passed


def test_plans_are_fresh_secret_and_in_range() -> None:
    plans = [probes.draw_plan(100, B, T) for _ in range(5)]
    assert len({p.token_seed for p in plans}) == 5
    assert len({tuple(p.random_cuts) for p in plans}) > 1
    for p in plans:
        assert p.batch_start % B == 0 and p.batch_start + p.batch_size <= 100
        assert all(0 <= t <= T - 2 for t in p.random_cuts + p.natural_cuts)
        assert sorted(p.permutation) == list(range(B)) and p.permutation != list(range(B))
        assert 0 <= p.alone_row < B and p.kept_rows


def test_nan_that_appears_only_under_perturbation_fails_the_probe() -> None:
    reference = rows()

    def nan_unless_reference(x: torch.Tensor) -> torch.Tensor:
        out = causal(x)
        return out if x.shape == reference.shape and torch.equal(x, reference) else out * math.nan

    results, measured = probes.run_probes(
        nan_unless_reference, reference, probes.draw_plan(B, B, T), V, EPS32
    )
    assert results["finite"].passed and not results["causality"].passed
    assert measured["causality_random"] == math.inf
