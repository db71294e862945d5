"""evaluate_bpb computes exactly nats / (ln 2 * bytes) over the scored targets, by itself.

val_bpb decides which candidates are kept, so the number must mean what it says. These tests check
the metric against hand computations (uniform logits give log2(V) bits per token; a two-token case
worked out on paper), that special tokens (byte length 0) count in neither sum, that the model only
ever sees the inputs (never the targets), that batching does not change the result, and that
unscorable output (NaN/inf, wrong shape, integer dtype) raises the typed errors the evaluator turns
into a rejection instead of producing a number.
"""

from __future__ import annotations

import math

import pytest
import torch

from prepare import BadLogits, BpbResult, NonFiniteLogits, evaluate_bpb


def _uniform(vocab: int):
    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, vocab)

    return logits_fn


def test_uniform_logits_score_log2_vocab_bits_per_token_over_bytes_per_token() -> None:
    vocab = 16
    token_bytes = torch.tensor([0] + [3] * (vocab - 1), dtype=torch.int32)  # id 0 is special
    rows = torch.randint(1, vocab, (5, 9), generator=torch.Generator().manual_seed(0))

    result = evaluate_bpb(_uniform(vocab), rows, token_bytes, batch_size=2)

    n_targets = 5 * 8
    assert result.tokens_scored == n_targets
    assert result.total_bytes == 3 * n_targets
    assert result.total_nats == pytest.approx(n_targets * math.log(vocab), rel=1e-6)
    assert result.val_bpb == pytest.approx(math.log2(vocab) / 3, rel=1e-6)


def test_two_token_case_worked_by_hand() -> None:
    # Vocab of 3: id 0 special, id 1 is 1 byte, id 2 is 2 bytes. One row [0, 1, 2]: x = [0, 1], y = [1, 2].
    token_bytes = torch.tensor([0, 1, 2], dtype=torch.int32)
    rows = torch.tensor([[0, 1, 2]])
    step0 = torch.tensor([0.0, math.log(3.0), 0.0])  # p(1) = 3/5
    step1 = torch.tensor([0.0, 0.0, math.log(2.0)])  # p(2) = 2/4

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([step0, step1]).unsqueeze(0).expand(x.shape[0], -1, -1)

    result = evaluate_bpb(logits_fn, rows, token_bytes, batch_size=1)

    nats = -math.log(3 / 5) - math.log(2 / 4)
    assert result.total_nats == pytest.approx(nats, rel=1e-6)
    assert result.total_bytes == 3
    assert result.tokens_scored == 2
    assert result.val_bpb == pytest.approx(nats / (math.log(2) * 3), rel=1e-6)


def test_special_token_targets_count_in_neither_nats_nor_bytes() -> None:
    vocab = 4
    token_bytes = torch.tensor([0, 1, 1, 1], dtype=torch.int32)
    confident_wrong = torch.tensor([-20.0, 20.0, -20.0, -20.0])  # huge loss on a BOS target

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        return confident_wrong.expand(*x.shape, vocab).clone()

    with_bos = torch.tensor([[1, 1, 0, 1]])  # targets 1, 0 (special), 1
    without = torch.tensor([[1, 1, 1]])  # targets 1, 1
    a = evaluate_bpb(logits_fn, with_bos, token_bytes, batch_size=1)
    b = evaluate_bpb(logits_fn, without, token_bytes, batch_size=1)

    assert a.tokens_scored == 2
    assert a.total_bytes == 2
    assert a.total_nats == pytest.approx(b.total_nats, rel=1e-6)
    assert a.val_bpb == pytest.approx(b.val_bpb, rel=1e-6)


def test_model_sees_only_inputs_and_batching_does_not_change_the_result() -> None:
    vocab = 11
    token_bytes = torch.arange(vocab, dtype=torch.int32)  # id 0 special, id k is k bytes
    rows = torch.randint(0, vocab, (7, 6), generator=torch.Generator().manual_seed(1))
    weight = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(2))
    seen: list[torch.Tensor] = []

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return weight[x]

    results = [evaluate_bpb(logits_fn, rows, token_bytes, batch_size=bs) for bs in (1, 3, 7, 100)]

    assert torch.equal(torch.cat(seen[:7]), rows[:, :-1])
    assert all(s.shape[1] == rows.shape[1] - 1 for s in seen)
    for r in results[1:]:
        assert r.total_bytes == results[0].total_bytes
        assert r.total_nats == pytest.approx(results[0].total_nats, rel=1e-6)
    # An independent float64 computation of the same quantity.
    x, y = rows[:, :-1], rows[:, 1:]
    logp = torch.log_softmax(weight[x].double(), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    scored = token_bytes[y] > 0
    expected = float(-logp[scored].sum()) / (math.log(2) * int(token_bytes[y].sum()))
    assert results[0].val_bpb == pytest.approx(expected, rel=1e-5)


def test_low_precision_logits_are_scored_in_float32() -> None:
    vocab = 8
    token_bytes = torch.ones(vocab, dtype=torch.int32)
    rows = torch.randint(0, vocab, (3, 5), generator=torch.Generator().manual_seed(3))
    weight = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(4))
    bf16 = evaluate_bpb(lambda x: weight[x].bfloat16(), rows, token_bytes, batch_size=2)
    f32 = evaluate_bpb(lambda x: weight[x].bfloat16().float(), rows, token_bytes, batch_size=2)
    assert isinstance(bf16, BpbResult)
    assert bf16.val_bpb == pytest.approx(f32.val_bpb, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise_non_finite_logits(bad: float) -> None:
    token_bytes = torch.ones(4, dtype=torch.int32)
    rows = torch.ones(4, 5, dtype=torch.int64)

    calls = []

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        out = torch.zeros(*x.shape, 4)
        if len(calls) == 2:
            out[-1, -1, 2] = bad  # one value, in the second batch only
        return out

    with pytest.raises(NonFiniteLogits):
        evaluate_bpb(logits_fn, rows, token_bytes, batch_size=2)
    assert calls == [2, 2]


@pytest.mark.parametrize(
    "make",
    [
        lambda x: torch.zeros(x.shape[0], x.shape[1] - 1, 4),  # too short
        lambda x: torch.zeros(x.shape[0], x.shape[1], 2),  # vocab smaller than the target ids
        lambda x: torch.zeros(*x.shape, 4, dtype=torch.int64),  # not floating point
        lambda x: (torch.zeros(*x.shape, 4),),  # not a tensor
    ],
)
def test_unscorable_output_raises_bad_logits(make) -> None:
    token_bytes = torch.ones(4, dtype=torch.int32)
    rows = torch.full((2, 5), 3, dtype=torch.int64)
    with pytest.raises(BadLogits):
        evaluate_bpb(make, rows, token_bytes, batch_size=2)
