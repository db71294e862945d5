"""The validation split does not exist anywhere in TRAIN's filesystem.

Property: TRAIN sees /data/train and /data/tokenizer only; /data/val, the data manifest and the EVAL
channels are absent, and a walk of the whole container filesystem finds no file with the content of
a validation shard (hashes compared with the host's), while it does find the training shard (so the
walk is not blind).
Attack defeated: training on, or memorising, the validation data the metric is computed on (the
reference loop lets train.py read it), including by searching for it under other names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox import constants as C
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

SNOOPER = Path(__file__).parent / "candidates" / "val_snooper.py"


def _hashes(folder: Path) -> dict[str, int]:
    return {
        hashlib.sha256(p.read_bytes()).hexdigest(): p.stat().st_size for p in sorted(folder.glob("*.npy"))
    }


def test_val_split_is_absent_during_training(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec], tiny_data: Path, tmp_path: Path
) -> None:
    val = _hashes(tiny_data / C.VAL_DIRNAME)
    train = _hashes(tiny_data / C.TRAIN_DIRNAME)
    assert val and train
    sizes = set(val.values()) | set(train.values())
    source = SNOOPER.read_text().replace("SIZES: set[int] = set()", f"SIZES: set[int] = {sizes!r}")
    assert repr(sizes) in source
    candidate = tmp_path / "val_snooper.py"
    candidate.write_text(source)

    verdict = docker_sandbox.run_trial(make_spec(candidate, time_budget_s=60))
    log = Path(verdict.logs["train"]).read_text()
    seen = json.loads(log.split("SEEN ", 1)[1].splitlines()[0])

    assert seen["data_listing"] == sorted([C.TRAIN_DIRNAME, C.TOKENIZER_DIRNAME])
    for path in ("/data/val", "/data/val/shard_00000.npy", "/data/manifest.json"):
        assert seen[f"at {path}"] is None, path
    for path in ("/artifact", "/report"):  # EVAL's channels: at most the image's empty mount points
        assert seen[f"at {path}"] in (None, []), path
    assert seen["val_paths"] == []
    found = set(seen["hashes"].values())
    assert not found & set(val), "a validation shard's content is readable from TRAIN"
    assert found & set(train), "the walk did not even find the training shard: the test is blind"
