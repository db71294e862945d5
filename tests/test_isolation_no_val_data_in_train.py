"""Property: no copy of the validation split is visible anywhere inside TRAIN.

Attack defeated: a candidate that trains on the validation tokens (or memorises them) to lower val_bpb
without learning anything. Preflight's probe walks the whole container filesystem and fingerprints every
file whose size matches a validation shard on the host; none may match, /data/val must not exist, and
the same search must find the mounted train shard (so its silence is not a broken search).
"""

from __future__ import annotations

import pytest

from sandbox import constants as C
from sandbox.preflight.facts import PreflightResult

pytestmark = pytest.mark.docker


def test_no_file_matches_a_val_shard(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_val_data")
    ev = check.evidence
    assert ev["val_shards_on_host"] >= 1
    assert ev["val_hits"] == []
    assert ev["val_dir_exists"] is False
    assert C.VAL_DIRNAME not in ev["data_listing"]
    assert any(p.startswith(f"{C.CONTAINER_DATA}/{C.TRAIN_DIRNAME}/") for p in ev["train_hits"])
    assert ev["files_scanned"] > 1000  # the whole image, not just /data
    assert check.passed, check.detail
