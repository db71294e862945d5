"""The tiny profile's documents: a public train split pinned by SHA-256 and a secret val split.

Where they come from: `sandbox/data/corpus.py`'s grammar, written for this project, over a small
hand-written English lexicon and invented places and people. Licence: the output of our own code,
covered by the project's licence; nothing is copied from a third-party text.

Why the val split is secret: the grammar is public (it ships in the trainer image, and anyone can paste
it into a train.py), so any split derived from it could be regenerated inside TRAIN and memorised,
which beats every honest model. Hence:
- train: the public corpus (pinned seed, CORPUS_SHA256) minus every CORPUS_RETIRED_EVERY-th document,
  pinned again by CORPUS_TRAIN_SHA256: the same bytes on every machine.
- retired: those other public documents; anyone can regenerate them, so no split uses them.
- val: CORPUS_VAL_TARGET_BYTES of documents from the same grammar and the same cast of people (the same
  distribution: honest scores stay comparable in expectation), drawn from a 64-bit seed taken from
  `secrets` when a data folder is first prepared, and never equal to a public document. The seed lives
  only in the folder's host-only VAL_SECRET_FILE, which no container mounts (TRAIN mounts train/ and
  tokenizer/, EVAL val/, tokenizer/ and manifest.json) and the manifest does not carry. Each data folder
  thus has its own val split; manifest.json records its identity (`val_sha256`, and the val shard's
  hash). Guessing the seed means a generation per guess over 2**64 seeds. To score several machines on
  the same split, copy a folder's VAL_SECRET_FILE into the others before preparing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import prepare
from prepare import DataIntegrityError
from sandbox.data import corpus

log = logging.getLogger(__name__)

CORPUS_SEED: Final = 0x5EED_7A1E_2024_0001  # the public corpus: train and retired documents
CORPUS_TARGET_BYTES: Final = 3_000_000  # generate public documents until they reach this size
CORPUS_RETIRED_EVERY: Final = 4  # public document i is retired iff i % 4 == 3 (it was val before)
CORPUS_VAL_TARGET_BYTES: Final = 785_000  # the secret val split's size: the retired documents' (785,069)
CORPUS_DOC_SEPARATOR: Final = "\x00"  # hashing only: documents never contain it
CORPUS_SHA256: Final = (
    "fad1b6c8737aae7ac8aee33682a26a69a2703619ba6d60a5c39e1a3996c27e50"  # of generate_corpus()
)
CORPUS_TRAIN_SHA256: Final = (
    "0f4a8ab19f4c214ea6c27e69864326de06f1247750a0c96790b5ca5593d32875"  # of train_documents()
)
CORPUS_VAL_SPLIT: Final = "secret-seed-v1"  # manifest identity of how val is drawn; old folders lack it
VAL_SECRET_FILE: Final = ".val_secret.json"  # host only, mode 0600: the val seed; no container mounts it


def generate_corpus(target_bytes: int = CORPUS_TARGET_BYTES) -> list[str]:
    """The tiny profile's public documents, in order: the same bytes on every machine (CORPUS_SHA256)."""
    return corpus.generate(target_bytes, CORPUS_SEED)


def corpus_sha256(docs: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i, doc in enumerate(docs):
        if i:
            h.update(CORPUS_DOC_SEPARATOR.encode())
        h.update(doc.encode("utf-8"))
    return h.hexdigest()


def split_corpus(docs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, retired): every CORPUS_RETIRED_EVERY-th public document is retired, the rest is train.

    Retired documents are public (they were the val split of manifest version 1), so no split uses them.
    """
    every = CORPUS_RETIRED_EVERY
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    retired = [d for i, d in enumerate(docs) if i % every == every - 1]
    return train, retired


def train_documents(public: Sequence[str] | None = None) -> list[str]:
    """The tiny profile's train documents, checked against both pins (the corpus and the train split)."""
    docs = generate_corpus() if public is None else public
    sha = corpus_sha256(docs)
    if sha != CORPUS_SHA256:
        raise DataIntegrityError(
            f"generated corpus sha256 {sha} != pinned {CORPUS_SHA256}: the "
            "generator or its lexicon changed; this would silently change the metric"
        )
    train, _ = split_corpus(docs)
    sha = corpus_sha256(train)
    if sha != CORPUS_TRAIN_SHA256:
        raise DataIntegrityError(
            f"train split sha256 {sha} != pinned {CORPUS_TRAIN_SHA256}: the split changed"
        )
    return train


def generate_val(
    seed: int, target_bytes: int = CORPUS_VAL_TARGET_BYTES, *, public: Sequence[str] | None = None
) -> list[str]:
    """Val documents drawn with `seed` from the public corpus's grammar and cast, none of them public."""
    exclude = frozenset(generate_corpus() if public is None else public)
    return corpus.generate(target_bytes, seed, cast_seed=CORPUS_SEED, exclude=exclude)


def read_val_secret(root: Path) -> tuple[int, str | None]:
    """The data folder's val seed and the val_sha256 it gave; a fresh seed (and None) if it has none."""
    path = root / VAL_SECRET_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        log.info("%s: drawing a secret val seed (kept in %s, which no container mounts)", root, path.name)
        return secrets.randbits(64), None
    except json.JSONDecodeError as exc:
        raise DataIntegrityError(
            f"{path} is not valid JSON ({exc}); remove it to draw a new val split"
        ) from None
    seed, sha = stored.get("val_seed"), stored.get("val_sha256")
    if not isinstance(seed, int) or not 0 <= seed < 2**64 or not isinstance(sha, str):
        raise DataIntegrityError(f"{path} is malformed; remove it to draw a new val split")
    return seed, sha


def val_documents(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The val documents of a prepared tiny data folder, regenerated from its host-only secret.

    Host only (tests, audits): no container has the secret. Checked against the manifest's val_sha256.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else prepare.data_dir("tiny")
    path = root / VAL_SECRET_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no {VAL_SECRET_FILE} in {root}: not a prepared tiny data folder, or not the host"
        )
    seed, _ = read_val_secret(root)
    docs = generate_val(seed)
    if corpus_sha256(docs) != prepare.read_manifest(root).get("val_sha256"):
        raise DataIntegrityError(f"{path} does not generate the val split manifest.json records")
    return docs
