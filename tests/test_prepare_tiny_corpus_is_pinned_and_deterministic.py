"""The tiny corpus's train documents are the same bytes on every machine, pinned by SHA-256, and worth
learning; its secret val documents come from the same distribution.

Scores from two machines (or two Python versions) are only comparable if the training data is identical
and the val documents are drawn from the same distribution. The corpus is generated, so these tests pin
the SHA-256 of the public corpus and of the train split taken from it, check the PRNG against the
published splitmix64 test vector, rerun the generator in a fresh interpreter with a different hash seed,
and make sure prepare() refuses a generator whose output drifted from a pin, including a stored val seed
that no longer gives the val split it recorded. They also check that the text has the structure a model
can learn beyond unigram statistics: size, vocabulary, varied document lengths, and facts (a town's
founding year, a person's age) that never contradict each other, across train and a val draw alike (the
val split shares the public corpus's cast of people; a val split with its own cast would contradict).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prepare
from sandbox.data import corpus, tiny
from sandbox.data.build import prepare_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return tiny.generate_corpus()


def test_splitmix64_matches_the_reference_test_vector() -> None:
    # Vigna's splitmix64.c, seed 1234567: the first five outputs.
    rng = corpus.SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(5)] == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]


@pytest.fixture(scope="module")
def val_draw(docs: list[str]) -> list[str]:
    """A val split as prepare draws one, from a fixed seed here (prepare's own seed is secret)."""
    return tiny.generate_val(0xC0FFEE, public=docs)


def test_generated_corpus_and_train_split_match_their_pinned_sha256(docs: list[str]) -> None:
    assert tiny.corpus_sha256(docs) == tiny.CORPUS_SHA256
    train, retired = tiny.split_corpus(docs)
    assert tiny.train_documents(docs) == train
    assert tiny.corpus_sha256(train) == tiny.CORPUS_TRAIN_SHA256
    assert len(retired) == len(docs) // tiny.CORPUS_RETIRED_EVERY


def test_generation_is_deterministic_across_interpreters(val_draw: list[str]) -> None:
    code = (
        "from sandbox.data import tiny; print(tiny.corpus_sha256(tiny.train_documents()), "
        "tiny.corpus_sha256(tiny.generate_val(0xC0FFEE)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [tiny.CORPUS_TRAIN_SHA256, tiny.corpus_sha256(val_draw)]


@pytest.mark.parametrize("pin", ["CORPUS_SHA256", "CORPUS_TRAIN_SHA256"])
def test_prepare_refuses_a_corpus_that_drifted_from_the_pin(
    pin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny, pin, "0" * 64)
    with pytest.raises(prepare.DataIntegrityError, match="pinned"):
        prepare_data("tiny", tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_prepare_refuses_a_val_seed_that_no_longer_gives_its_split(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    (copy / "manifest.json").unlink()  # force a rebuild, which regenerates val from the stored seed
    real = tiny.generate_val
    monkeypatch.setattr(tiny, "generate_val", lambda *a, **kw: real(*a, **kw)[:-1])  # a drifted generator
    with pytest.raises(prepare.DataIntegrityError, match="val sha256"):
        prepare_data("tiny", copy)
    assert not (copy / "manifest.json").exists()


def test_corpus_is_large_varied_and_natural_language_like(docs: list[str]) -> None:
    total = sum(len(d.encode("utf-8")) for d in docs)
    assert 2_000_000 <= total <= 4_000_000
    assert all(tiny.CORPUS_DOC_SEPARATOR not in d for d in docs)
    assert len(set(docs)) == len(docs)
    lengths = sorted(len(d) for d in docs)
    assert lengths[-1] > 10 * lengths[0]
    assert sum(n > 2_500 for n in lengths) >= 50  # a tail of long documents, longer than a tiny row
    words = collections.Counter(re.findall(r"[A-Za-z]+", " ".join(docs)))
    assert len(words) > 400
    # Zipf-like: the most frequent words are function words, and they are far more frequent than most.
    top = {w for w, _ in words.most_common(10)}
    assert {"the", "and"} <= top
    text = "\n".join(docs)
    for mark in (". ", ", ", '"', "?", "\n\n", "Q: "):
        assert mark in text


def test_val_draws_look_like_the_public_corpus(docs: list[str], val_draw: list[str]) -> None:
    _, retired = tiny.split_corpus(docs)  # the old val split: documents from the same generator
    size = sum(len(d.encode("utf-8")) for d in val_draw)
    assert tiny.CORPUS_VAL_TARGET_BYTES <= size < tiny.CORPUS_VAL_TARGET_BYTES + 50_000
    assert len(set(val_draw)) == len(val_draw)
    assert not set(val_draw) & set(docs)
    assert 0.8 < len(val_draw) / len(retired) < 1.25
    for mark in ("Q: ", "Dear ", "How to ", '"'):  # every genre
        assert sum(mark in d for d in val_draw) > 0.5 * sum(mark in d for d in retired)


def test_facts_about_towns_and_people_never_contradict(docs: list[str], val_draw: list[str]) -> None:
    text = "\n".join([*docs, *val_draw])
    founded: dict[str, set[str]] = collections.defaultdict(set)
    for town, year in re.findall(
        r"\b(?!It\b)([A-Z][a-z]+(?: [A-Z][a-z]+)?),? (?:was )?founded in (\d{4})", text
    ):
        founded[town].add(year)
    ages: dict[str, set[str]] = collections.defaultdict(set)
    for person, age in re.findall(r"([A-Z][a-z]+ [A-Z][a-z]+) is (\d+) years old", text):
        ages[person].add(age)
    assert len(founded) >= 10
    assert len(ages) >= 30
    assert all(len(years) == 1 for years in founded.values()), founded
    assert all(len(a) == 1 for a in ages.values())


def test_verbs_agree_with_their_subjects(docs: list[str]) -> None:
    text = "\n".join(docs)
    # "There is/are": the verb agrees with the noun phrase that follows it.
    for verb, det in re.findall(r"[Tt]here (is|are) (\w+)", text):
        assert (verb == "is") == (det in ("a", "an")), (verb, det)
    # "each of the Xs" is singular, "most of the Xs" plural.
    assert not re.search(r"Each of the \w+ (are|have)\b", text)
    assert not re.search(r"Most of the \w+ (is|has)\b", text)
