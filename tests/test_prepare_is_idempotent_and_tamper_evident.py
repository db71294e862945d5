"""Running prepare twice changes nothing; altered data is detected and rebuilt.

The controller runs `python prepare.py` before every session; it must be a cheap no-op when the data
is in place, and it must not trust a folder whose bytes changed (a half-written shard, a hand-edited
val split). These tests check that a second run rewrites no file, that verify_data catches a changed
or missing file, that prepare rebuilds exactly the same bytes (the manifest hash is the same across
runs), that the CLI says the data is up to date, that the files are readable by another uid (the
containers run as 65532), that a folder holding one profile is never overwritten with another, and
that the unigram baseline is recorded for an EVAL view without train/.
"""

from __future__ import annotations

import math
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import prepare
from sandbox.constants import DATA_MANIFEST_FILE, VAL_DIRNAME
from sandbox.data import build, tiny
from sandbox.data.build import prepare_data

REPO = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_ino)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_second_prepare_rewrites_nothing(tiny_data: Path) -> None:
    before = _snapshot(tiny_data)
    assert prepare_data("tiny", tiny_data) == tiny_data
    assert _snapshot(tiny_data) == before
    manifest = prepare.read_manifest(tiny_data)
    assert manifest["profile"] == "tiny"
    assert manifest["corpus_sha256"] == tiny.CORPUS_SHA256
    assert set(manifest["files"]) == {p for p in before if p != DATA_MANIFEST_FILE}


def test_tampered_file_is_detected_and_rebuilt_identically(tiny_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    fingerprint = prepare.verify_data(copy)
    shard = copy / VAL_DIRNAME / "shard_00000.npy"
    original = shard.read_bytes()
    shard.write_bytes(original[:-2] + bytes([original[-2] ^ 1, original[-1]]))

    with pytest.raises(prepare.DataIntegrityError, match="shard_00000"):
        prepare.verify_data(copy)
    assert prepare.verify_data(copy, subdirs=["train", "tokenizer"]) == fingerprint  # only what TRAIN mounts

    prepare_data("tiny", copy)
    assert shard.read_bytes() == original
    assert prepare.verify_data(copy) == fingerprint


def test_missing_file_is_detected(tiny_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    (copy / "tokenizer" / "token_bytes.json").unlink()
    with pytest.raises(prepare.DataIntegrityError, match="missing"):
        prepare.verify_data(copy)


def test_cli_reports_up_to_date(tiny_data: Path) -> None:
    out = subprocess.run(
        [sys.executable, "prepare.py", "--profile", "tiny", "--data-dir", str(tiny_data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "up to date" in out.stderr
    assert "unigram" in out.stderr


def test_data_files_are_world_readable(tiny_data: Path) -> None:
    files = [p for p in tiny_data.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(files) >= 5
    for p in files:
        assert p.stat().st_mode & stat.S_IROTH, p


def test_unigram_baseline_beats_a_uniform_guess(tiny_data: Path) -> None:
    tiny = prepare.PROFILES["tiny"]
    bpb = prepare.unigram_bpb(tiny_data)
    rows = prepare.eval_rows(tiny_data, n_tokens=tiny.eval_tokens, seq_len=tiny.max_seq_len)
    token_bytes = prepare.load_token_bytes(tiny_data)
    targets = rows[:, 1:].reshape(-1)
    n_real = int((token_bytes > 0).sum())
    scored = int((token_bytes[targets] > 0).sum())
    uniform_bpb = math.log2(n_real) * scored / int(token_bytes[targets].sum())
    assert 0.0 < bpb < uniform_bpb


def test_unigram_baseline_is_recorded_for_the_eval_container(tiny_data: Path, tmp_path: Path) -> None:
    eval_view = tmp_path / "eval_container_view"
    for sub in (VAL_DIRNAME, "tokenizer"):
        shutil.copytree(tiny_data / sub, eval_view / sub)
    shutil.copy(tiny_data / DATA_MANIFEST_FILE, eval_view / DATA_MANIFEST_FILE)
    assert prepare.unigram_bpb(eval_view) == prepare.unigram_bpb(tiny_data)
    # What the manifest records is what train/ gives when recomputed now.
    assert prepare.unigram_bpb(eval_view) == build.unigram_bpb(tiny_data, prepare.PROFILES["tiny"])
    (eval_view / DATA_MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError):
        prepare.unigram_bpb(eval_view)


def test_prepare_refuses_to_overwrite_another_profiles_data(tiny_data: Path) -> None:
    before = _snapshot(tiny_data)
    with pytest.raises(prepare.PrepareError, match="tiny"):
        prepare_data("gpu", tiny_data, num_shards=1, base_url="http://127.0.0.1:9/unreachable")
    assert _snapshot(tiny_data) == before
