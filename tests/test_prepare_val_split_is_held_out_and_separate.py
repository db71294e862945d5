"""Validation documents are held out from training by construction and stored apart.

A score on documents the model trained on (or the tokenizer was fitted to) measures memory, not
learning; and a val split inside the folder the TRAIN container mounts would let a candidate read
it. These tests check that no document is in both splits (as text and as decoded token shards),
that the tokenizer is trained on train documents only, that train/ and val/ are separate folders,
and that a data folder without val/ (what TRAIN sees) still trains while every val loader raises
FileNotFoundError.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import prepare
from sandbox.constants import TOKENIZER_DIRNAME, TRAIN_DIRNAME, VAL_DIRNAME

TINY = prepare.PROFILES["tiny"]


def _decoded_docs(data: Path, split: str) -> list[str]:
    tok = prepare.load_tokenizer(data)
    docs = []
    for stream in prepare.load_split_tokens(split, data):
        bos = np.flatnonzero(np.asarray(stream) == prepare.BOS_ID)
        for a, b in zip(bos, [*bos[1:], len(stream)], strict=True):
            docs.append(tok.decode(stream[a + 1 : b].tolist()))
    return docs


def test_no_document_is_in_both_splits() -> None:
    docs = prepare.generate_corpus()
    train, val = prepare.split_corpus(docs)
    assert len(train) + len(val) == len(docs)
    assert len(val) >= len(docs) // (prepare.CORPUS_VAL_EVERY + 1)
    assert not set(train) & set(val)


def test_shards_on_disk_decode_to_the_two_disjoint_splits(tiny_data: Path) -> None:
    train, val = prepare.split_corpus(prepare.generate_corpus())
    assert _decoded_docs(tiny_data, VAL_DIRNAME) == val
    assert _decoded_docs(tiny_data, TRAIN_DIRNAME) == train
    assert (tiny_data / TRAIN_DIRNAME).is_dir() and (tiny_data / VAL_DIRNAME).is_dir()
    assert not list((tiny_data / TRAIN_DIRNAME).glob("*val*"))


def test_tokenizer_sees_train_documents_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = prepare.train_tokenizer

    def spy(texts, vocab_size):  # type: ignore[no-untyped-def]
        texts = list(texts)
        seen.extend(texts)
        return real(texts, vocab_size)

    monkeypatch.setattr(prepare, "train_tokenizer", spy)
    prepare.prepare("tiny", tmp_path)
    train, val = prepare.split_corpus(prepare.generate_corpus())
    assert seen == train
    assert not set(seen) & set(val)


def test_without_val_folder_training_works_and_val_loaders_raise(tiny_data: Path, tmp_path: Path) -> None:
    mounted = tmp_path / "train_container_view"
    for sub in (TRAIN_DIRNAME, TOKENIZER_DIRNAME):
        shutil.copytree(tiny_data / sub, mounted / sub)

    x, y = next(prepare.make_dataloader("train", 2, 32, data_dir=mounted))
    assert x.shape == y.shape == (2, 32)
    assert prepare.load_tokenizer(mounted).get_vocab_size() <= TINY.vocab_size
    with pytest.raises(FileNotFoundError, match="val"):
        prepare.load_split_tokens(VAL_DIRNAME, mounted)
    with pytest.raises(FileNotFoundError):
        prepare.eval_rows(mounted, n_tokens=TINY.eval_tokens, seq_len=TINY.max_seq_len)
    with pytest.raises(FileNotFoundError):
        next(prepare.make_dataloader("val", 2, 32, data_dir=mounted))
