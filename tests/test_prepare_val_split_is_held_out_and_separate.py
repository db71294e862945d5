"""Validation documents are held out from training by construction, stored apart, and secret.

A score on documents the model trained on (or the tokenizer was fitted to) measures memory, not
learning; a val split inside the folder the TRAIN container mounts would let a candidate read it; and a
val split derivable from public code (the tiny corpus's generator ships in the trainer image) would let
a candidate regenerate and memorise it. These tests check that no document is in both splits (as text
and as decoded token shards), that no val document is public, that the tokenizer is trained on train
documents only, that train/ and val/ are separate folders, that a data folder without val/ (what TRAIN
sees) still trains while every val loader raises FileNotFoundError, that two data folders draw
independent val splits from a seed that is stored nowhere a container or the manifest can show, and
that a folder prepared under the old contract (a public val split) is rebuilt, loudly, on the next
prepare with its train split and tokenizer unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import prepare
from sandbox.constants import DATA_MANIFEST_FILE, TOKENIZER_DIRNAME, TRAIN_DIRNAME, VAL_DIRNAME
from sandbox.data import build, tiny
from sandbox.data.build import prepare_data

TINY = prepare.PROFILES["tiny"]
MOUNTED = (TRAIN_DIRNAME, VAL_DIRNAME, TOKENIZER_DIRNAME)  # everything any container sees of the folder


def _decoded_docs(data: Path, split: str) -> list[str]:
    tok = prepare.load_tokenizer(data)
    docs = []
    for stream in prepare.load_split_tokens(split, data):
        bos = np.flatnonzero(np.asarray(stream) == prepare.BOS_ID)
        for a, b in zip(bos, [*bos[1:], len(stream)], strict=True):
            docs.append(tok.decode(stream[a + 1 : b].tolist()))
    return docs


@pytest.fixture(scope="module")
def public() -> list[str]:
    return tiny.generate_corpus()


@pytest.fixture(scope="module")
def val(tiny_data: Path) -> list[str]:
    return tiny.val_documents(tiny_data)


def test_no_document_is_in_both_splits_and_no_val_document_is_public(
    public: list[str], val: list[str]
) -> None:
    train, retired = tiny.split_corpus(public)
    assert len(train) + len(retired) == len(public)
    assert len(val) >= len(retired) * 4 // 5
    assert not set(train) & set(val)
    assert not set(public) & set(val)  # not even a retired one: those are public too


def test_shards_on_disk_decode_to_the_two_disjoint_splits(
    tiny_data: Path, public: list[str], val: list[str]
) -> None:
    assert _decoded_docs(tiny_data, VAL_DIRNAME) == val
    assert _decoded_docs(tiny_data, TRAIN_DIRNAME) == tiny.train_documents(public)
    assert (tiny_data / TRAIN_DIRNAME).is_dir() and (tiny_data / VAL_DIRNAME).is_dir()
    assert not list((tiny_data / TRAIN_DIRNAME).glob("*val*"))


def test_tokenizer_sees_train_documents_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, public: list[str]
) -> None:
    seen: list[str] = []
    real = build.train_tokenizer

    def spy(texts: Iterable[str], vocab_size: int) -> Any:
        texts = list(texts)
        seen.extend(texts)
        return real(texts, vocab_size)

    monkeypatch.setattr(build, "train_tokenizer", spy)
    prepare_data("tiny", tmp_path)
    assert seen == tiny.train_documents(public)
    assert not set(seen) & set(tiny.val_documents(tmp_path))


def test_val_split_is_secret_per_folder_and_stored_nowhere_a_container_sees(
    tiny_data: Path, tmp_path: Path, val: list[str]
) -> None:
    other = prepare_data("tiny", tmp_path / "other")
    manifests = [prepare.read_manifest(d) for d in (tiny_data, other)]
    # Two folders, two independent secret draws: different val documents, identical train and tokenizer.
    assert manifests[0]["val_sha256"] != manifests[1]["val_sha256"]
    assert not set(val) & set(tiny.val_documents(other))
    for rel in ("train/shard_00000.npy", "tokenizer/tokenizer.json"):
        assert manifests[0]["files"][rel] == manifests[1]["files"][rel]
    assert manifests[0]["files"]["val/shard_00000.npy"] != manifests[1]["files"]["val/shard_00000.npy"]
    # The seed is only in the host-only secret file: not under a mounted folder, not in the manifest.
    secret = tiny_data / tiny.VAL_SECRET_FILE
    seed = json.loads(secret.read_text())["val_seed"]
    assert secret.parent == tiny_data and secret.name not in MOUNTED
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    manifest_text = (tiny_data / DATA_MANIFEST_FILE).read_text()
    assert str(seed) not in manifest_text and f"{seed:x}" not in manifest_text
    assert not any("seed" in key for key in manifests[0])
    mounted_bytes = b"".join(p.read_bytes() for sub in MOUNTED for p in (tiny_data / sub).rglob("*"))
    assert str(seed).encode() not in mounted_bytes


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
    with pytest.raises(FileNotFoundError, match="secret"):
        tiny.val_documents(mounted)


def test_a_folder_with_the_old_public_val_split_is_rebuilt_loudly(
    tiny_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    # What prepare wrote before the val split became secret: no secret, no split identity in the manifest.
    (old / tiny.VAL_SECRET_FILE).unlink()
    manifest = prepare.read_manifest(old)
    for key in ("val_split", "val_sha256", "train_sha256"):
        del manifest[key]
    (old / DATA_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    train_before = (old / TRAIN_DIRNAME / "shard_00000.npy").read_bytes()
    tokenizer_before = (old / TOKENIZER_DIRNAME / "tokenizer.json").read_bytes()

    with caplog.at_level(logging.WARNING, logger="prepare"):
        prepare_data("tiny", old)

    assert any("regenerate" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    rebuilt = prepare.read_manifest(old)
    assert rebuilt["val_split"] == tiny.CORPUS_VAL_SPLIT
    assert (old / tiny.VAL_SECRET_FILE).is_file()
    assert rebuilt["val_sha256"] != prepare.read_manifest(tiny_data)["val_sha256"]  # a fresh secret draw
    assert (old / TRAIN_DIRNAME / "shard_00000.npy").read_bytes() == train_before
    assert (old / TOKENIZER_DIRNAME / "tokenizer.json").read_bytes() == tokenizer_before
