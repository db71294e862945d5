"""Training batches and evaluation rows are BOS-aligned packings of whole documents.

train.py trusts the dataloader for its inputs and the evaluator trusts eval_rows for the rows it
scores. These tests check shapes and dtypes, that y is x shifted by one, that every row starts at a
document start and holds whole documents except for one crop at its end, that the loader is infinite
and seedable, that eval_rows is the same fixed (N, T+1) set on every call with N*T = EVAL_TOKENS, and
that token byte lengths add up to the UTF-8 size of the text (what bits per byte divides by).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import prepare
from sandbox.constants import TOKENIZER_DIRNAME, TRAIN_DIRNAME, VAL_DIRNAME
from sandbox.data import tiny

TINY = prepare.PROFILES["tiny"]
BOS = prepare.BOS_ID


@pytest.fixture
def synthetic_data(tmp_path: Path) -> tuple[Path, list[list[int]]]:
    """A train split of 12 recognisable documents: doc k is [BOS, k+1, k+1, ...] of varied lengths."""
    docs = [[BOS] + [k + 1] * n for k, n in enumerate((3, 9, 1, 14, 6, 30, 2, 8, 5, 11, 4, 20))]
    stream = np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs])
    (tmp_path / TRAIN_DIRNAME).mkdir()
    np.save(tmp_path / TRAIN_DIRNAME / "shard_00000.npy", stream, allow_pickle=False)
    return tmp_path, docs


def _segments(row: list[int]) -> list[list[int]]:
    starts = [i for i, t in enumerate(row) if t == BOS]
    return [row[a:b] for a, b in zip(starts, [*starts[1:], len(row)], strict=True)]


def test_rows_are_whole_documents_with_one_crop_at_the_end(synthetic_data) -> None:
    data, docs = synthetic_data
    loader = prepare.make_dataloader("train", 3, 16, data_dir=data, seed=7, buffer_size=5)
    for x, y in itertools.islice(loader, 40):  # many epochs of this small split: the loader is infinite
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (3, 16)
        assert x.is_contiguous() and y.is_contiguous()  # train.py may .view() them
        assert torch.equal(x[:, 1:], y[:, :-1])
        full = torch.cat([x, y[:, -1:]], dim=1)
        for row in full.tolist():
            assert row[0] == BOS
            segments = _segments(row)
            for seg in segments[:-1]:
                assert seg in docs  # whole documents
            last = segments[-1]
            doc = docs[last[1] - 1] if len(last) > 1 else [BOS]
            assert last == doc[: len(last)]  # the last one may be cropped, never shifted


def test_loader_is_seedable(synthetic_data) -> None:
    data, _ = synthetic_data

    def batches(seed: int) -> list[torch.Tensor]:
        loader = prepare.make_dataloader("train", 2, 16, data_dir=data, seed=seed, buffer_size=4)
        return [x for x, _ in itertools.islice(loader, 6)]

    assert all(torch.equal(a, b) for a, b in zip(batches(1), batches(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches(1), batches(2), strict=True))


def test_tiny_train_batches_start_with_bos(tiny_data: Path) -> None:
    loader = prepare.make_dataloader("train", 4, TINY.max_seq_len, data_dir=tiny_data)
    x, y = next(loader)
    assert x.shape == y.shape == (4, TINY.max_seq_len)
    assert x.dtype == y.dtype == torch.int64
    assert bool((x[:, 0] == BOS).all())
    assert int(x.max()) < TINY.vocab_size and int(x.min()) >= 0


def test_eval_rows_are_fixed_bos_aligned_and_sized_by_eval_tokens(tiny_data: Path) -> None:
    rows = prepare.eval_rows(tiny_data, n_tokens=TINY.eval_tokens, seq_len=TINY.max_seq_len)
    again = prepare.eval_rows(tiny_data, n_tokens=TINY.eval_tokens, seq_len=TINY.max_seq_len)
    assert rows.dtype == torch.int64
    assert rows.shape == (TINY.eval_tokens // TINY.max_seq_len, TINY.max_seq_len + 1)
    assert rows.shape[0] * TINY.max_seq_len == TINY.eval_tokens
    assert torch.equal(rows, again)
    assert bool((rows[:, 0] == BOS).all())
    val_tokens = set(np.unique(np.concatenate(prepare.load_split_tokens(VAL_DIRNAME, tiny_data))).tolist())
    assert set(rows.unique().tolist()) <= val_tokens


def test_eval_rows_refuse_to_repeat_a_too_small_split(tiny_data: Path) -> None:
    with pytest.raises(prepare.DataIntegrityError, match="val split"):
        prepare.eval_rows(tiny_data, n_tokens=100 * TINY.eval_tokens, seq_len=TINY.max_seq_len)


def test_token_bytes_add_up_to_the_utf8_size_of_the_text(tiny_data: Path) -> None:
    token_bytes = prepare.load_token_bytes(tiny_data)
    assert token_bytes.dtype == torch.int32
    assert token_bytes.shape == (TINY.vocab_size,)
    assert int(token_bytes[BOS]) == 0
    assert bool((token_bytes[1:257] >= 1).all())  # every byte is a token
    val = tiny.val_documents(tiny_data)
    stream = torch.from_numpy(
        np.concatenate(prepare.load_split_tokens(VAL_DIRNAME, tiny_data)).astype(np.int64)
    )
    assert int(token_bytes[stream].sum()) == sum(len(d.encode("utf-8")) for d in val)


def test_tokenizer_round_trips_and_prepends_bos(tiny_data: Path) -> None:
    tok = prepare.load_tokenizer(tiny_data)
    assert tok.get_bos_token_id() == BOS
    assert tok.get_vocab_size() == TINY.vocab_size
    text = 'Mara Quell, a clockmaker from Dunmere, said: "Où est la gare?" 12345 \u2603\n\nEnd.'
    ids = tok.encode(text, prepend=BOS)
    assert ids[0] == BOS and BOS not in ids[1:]
    assert tok.decode(ids[1:]) == text
    assert tok.encode([text, "x"], prepend=BOS)[0] == ids
    assert (tiny_data / TOKENIZER_DIRNAME / "tokenizer.json").read_text().lstrip().startswith("{")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_land_on_the_device(synthetic_data) -> None:
    data, _ = synthetic_data
    cpu = prepare.make_dataloader("train", 2, 16, data_dir=data, seed=3, buffer_size=4)
    gpu = prepare.make_dataloader("train", 2, 16, "cuda", data_dir=data, seed=3, buffer_size=4)
    for (xc, yc), (xg, yg) in itertools.islice(zip(cpu, gpu, strict=True), 5):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())
