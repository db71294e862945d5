"""The probes reject graphs that look ahead, mix batch rows, are nondeterministic or emit NaN.

Property: a graph passes the checks only if, on real validation rows at secret positions, its
log-probabilities at positions <= t ignore every token after t, each row's output ignores the other
rows and the batch size, and the same input gives the same output. A graph that fails any of these is
rejected and not scored. (Every scored row is checked: tests/test_evaluator_checks_every_scored_row.py.)
Attacks defeated: non-causal attention (reading the token being predicted), mixing rows (the next
row continues the same text), counting calls or drawing state to answer probes differently from
scoring, and NaN logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sandbox.incontainer import probes
from sandbox.incontainer.evaluate import evaluate
from tests.evil_models import FAST_PROFILE, exported

B, T, V = 8, 16, 32
EPS32 = torch.finfo(torch.float32).eps


@pytest.mark.parametrize(
    ("model", "check"),
    [
        ("non_causal", "probe:causality"),
        (
            "row_mixing",
            "probe:row_independence|probe:row_alone|probe:causality",
        ),  # any pass that changes other rows
        ("nan_logits", "probe:finite"),
    ],
)
def test_leaky_exported_models_are_rejected_by_their_probe(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, model: str, check: str
) -> None:
    report = evaluate(FAST_PROFILE, exported(model, tmp_path_factory.getbasetemp()), tiny_data)
    assert report["status"] == "rejected" and report["val_bpb"] is None
    assert report["check"] in check.split("|"), report["reason"]
    assert report["probes"][report["check"].split(":")[1]]["passed"] is False
    assert report["probe_plan"]["batch_size"] == FAST_PROFILE.eval_batch_size  # recorded after the fact
    assert ("score" in report["timings"]) == (
        report["check"] in ("probe:causality", "probe:row_independence")
    )


# --- the one-batch checks on hand-written logits functions (no export, milliseconds) ---

TABLE = torch.randn(V, V, generator=torch.Generator().manual_seed(0))


def causal(x: torch.Tensor) -> torch.Tensor:
    """Prefix mean of per-token vectors: causal, per-row, deterministic."""
    h = TABLE[x].cumsum(dim=1)
    return h / torch.arange(1, x.shape[1] + 1)[None, :, None]


def knows_batch_size(x: torch.Tensor) -> torch.Tensor:
    return causal(x) + (0.5 if x.shape[0] == 1 else 0.0) * TABLE[x]


def rows() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


def run(fn: probes.LogitsFn) -> dict[str, probes.ProbeResult]:
    results, _, _ = probes.check_batch(fn, rows(), probes.draw_plan(B, B, T), EPS32)
    return results


def test_honest_function_passes_every_one_batch_check() -> None:
    results = run(causal)
    assert set(results) == {"finite", "determinism", "row_alone"}
    assert all(r.passed for r in results.values()), results


def test_behaving_differently_alone_fails_the_row_alone_check() -> None:
    assert not run(knows_batch_size)["row_alone"].passed


def test_answers_that_change_between_calls_fail_determinism() -> None:
    calls = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return causal(x) + 1e-2 * len(calls) * TABLE[x]

    assert not run(counting)["determinism"].passed


def test_nan_logits_fail_first_and_stop_the_checks() -> None:
    results, _, logits = probes.check_batch(
        lambda x: causal(x) * math.nan, rows(), probes.draw_plan(B, B, T), EPS32
    )
    assert list(results) == ["finite"] and not results["finite"].passed and logits is None
