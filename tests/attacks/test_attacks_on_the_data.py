"""Attacks on the data and the files around TRAIN: the validation split is nowhere in TRAIN's world,
nothing else to cheat with is either, and nothing TRAIN can reach is writable but its output channel.

Properties, each with the attack that would break it (tests/attacks/corpus/NAME.py):
- the validation split is absent from TRAIN: not at any path (direct, through /proc/*/root or cwd,
  next to a mount), not in the environment or the mount table, and no file anywhere in the
  container has a validation shard's content; the same walk does find the training shard, so it is
  not blind (read_val_split; had it found the split it would have exported a bigram of it, about
  0.84 val_bpb against unigram's 1.92, and this test would see `ok` instead of `crash`);
- there is nothing else to cheat with: no checkpoint, corpus or data file in the image, no extra
  folder or hidden file on the data mount, no validation statistics in the tokenizer (foreign_data);
- the candidate cannot rewrite its own train.py (the audit copy), prepare.py, the sandbox's sources
  or the data mount: every write is refused and the host's files are byte-for-byte unchanged
  (overwrite_candidate; the conftest also checks the host's data folder and prepare.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sandbox import constants as C
from tests.attacks.conftest import CORPUS, AttackResult

pytestmark = pytest.mark.docker

REFUSED = {"EROFS", "EACCES", "EPERM", "EXDEV", "EBUSY"}
WALK_BUDGET_S = 60  # the walks of the whole filesystem are slow under gVisor on a loaded machine
# Hashed at collection, before any attack runs: the host's copy of the attack must not change.
OVERWRITE_SOURCE = CORPUS / "overwrite_candidate.py"
OVERWRITE_SHA256 = hashlib.sha256(OVERWRITE_SOURCE.read_bytes()).hexdigest()


def _shard_hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


@pytest.mark.attack("read_val_split", time_budget_s=WALK_BUDGET_S)
def test_the_val_split_is_nowhere_in_train(attack: AttackResult, tiny_data: Path) -> None:
    attack.assert_contained("crash")
    seen = attack.json_line("ATTACK ")
    assert seen["data_listing"] == sorted([C.TRAIN_DIRNAME, C.TOKENIZER_DIRNAME])
    looked = {k.removeprefix("at "): v for k, v in seen.items() if k.startswith("at ")}
    for path in ("/data/val", "/data/val/shard_00000.npy", "/data/manifest.json", "/data/train/../val"):
        for root in ("", "/proc/self/root", "/proc/1/root"):
            assert looked[root + path] is None, f"{root}{path}: {looked[root + path]}"
    for path in ("/artifact", "/report"):  # EVAL's channels: at most the image's empty mount points
        assert looked[path] in (None, []), f"{path}: {looked[path]}"
    for path, what in looked.items():  # every val-like path it tried: absent, or refused
        if Path(path).name in ("val", "manifest.json") or path.endswith(".npy"):
            assert what is None or (isinstance(what, str) and what != "file"), f"{path}: {what}"
    mounts = [m for m in seen["mounts"] if "val" in Path(m["point"]).parts + Path(m["root"]).parts]
    assert not mounts, f"a mount of the val split: {mounts}"
    assert not [k for k, v in seen["env"].items() if "/val" in v], seen["env"]
    assert seen["val_paths"] == []
    assert seen["val_candidates"] == []
    found = {s["sha256"] for s in seen["token_streams"].values()}
    val, train = _shard_hashes(tiny_data / C.VAL_DIRNAME), _shard_hashes(tiny_data / C.TRAIN_DIRNAME)
    assert val and train
    assert not found & val, "a validation shard's content is readable from TRAIN"
    assert found & train, "the walk did not even find the training shard: the test is blind"
    assert seen["files_examined"] > 1000, "the walk opened almost nothing: the test is blind"


@pytest.mark.attack("foreign_data", time_budget_s=WALK_BUDGET_S)
def test_there_is_nothing_else_to_train_on(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    seen = attack.json_line("ATTACK ")
    assert seen["files_walked"] > 1000, "the walk saw almost nothing: the test is blind"
    for key in ("checkpoints", "data_mount_extra", "app_data", "tokenizer_extra_keys"):
        assert seen[key] == [], f"{key}: {seen[key]}"
    assert seen["long_tokens"] == 0  # no whole sentences (of either split) baked into the vocabulary
    assert seen["env"] == {}


@pytest.mark.attack("overwrite_candidate")
def test_nothing_train_relies_on_is_writable(attack: AttackResult) -> None:
    attack.assert_contained("crash")
    seen = attack.json_line("ATTACK ")
    attempts: dict[str, str] = seen["attempts"]
    for target in (
        C.CONTAINER_CANDIDATE,
        f"{C.CONTAINER_APP}/prepare.py",
        f"{C.CONTAINER_APP}/sandbox/incontainer/evaluate.py",
        f"{C.CONTAINER_DATA}/train/shard_00000.npy",
        f"{C.CONTAINER_DATA}/tokenizer/tokenizer.json",
    ):
        assert f"append {target}" in attempts, f"the attack never tried {target}"
    opened = {what: err for what, err in attempts.items() if err not in REFUSED}
    assert not opened, f"not refused: {opened}"
    assert seen["own_sha256_after"] == seen["own_sha256_before"] == OVERWRITE_SHA256
    assert hashlib.sha256((attack.trial_dir / C.CANDIDATE_FILE).read_bytes()).hexdigest() == OVERWRITE_SHA256
    assert hashlib.sha256(OVERWRITE_SOURCE.read_bytes()).hexdigest() == OVERWRITE_SHA256
