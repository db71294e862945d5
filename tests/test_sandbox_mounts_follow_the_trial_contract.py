"""An honest candidate scores through both containers, and each container gets exactly its mounts.

Property: TRAIN mounts the candidate (read-only), train/ and tokenizer/ (read-only) and the output
volume (the only writable mount); EVAL mounts the output volume read-only at /artifact, val/ and
tokenizer/ read-only, and the report volume; neither sees anything else of the host. The verdict's
score is the one in the evaluator's report, kept verbatim in the trial folder.
Attacks defeated: a TRAIN that can write where EVAL reads anything but the artifact, or read what only
EVAL may read; an EVAL that could be changed by what TRAIN wrote beyond model.pt2; a controller that
scores anything but the report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine.docker import DockerSandbox
from sandbox.report import EvalReport
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def _mounts(trial_dir: Path, state_file: str) -> dict[str, dict[str, Any]]:
    state = json.loads((trial_dir / state_file).read_text())
    return {m["Destination"]: m for m in state["Mounts"]}


def test_honest_export_scores_with_the_contract_mounts(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec], tiny_data: Path
) -> None:
    spec = make_spec("tiny_export", time_budget_s=120)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.OK, verdict.reason
    assert verdict.val_bpb is not None and math.isfinite(verdict.val_bpb)
    report = json.loads((spec.trial_dir / C.REPORT_FILE).read_text())
    assert verdict.report is not None and verdict.report == EvalReport.model_validate(report)
    assert report["val_bpb"] == verdict.val_bpb

    train = _mounts(spec.trial_dir, C.TRAIN_STATE_FILE)
    assert set(train) == {C.CONTAINER_CANDIDATE, "/data/train", "/data/tokenizer", C.CONTAINER_OUT}
    assert [dest for dest, m in train.items() if m["RW"]] == [C.CONTAINER_OUT]
    assert train[C.CONTAINER_OUT]["Type"] == "volume"
    assert train["/data/train"]["Source"] == str(tiny_data / C.TRAIN_DIRNAME)

    evaluator = _mounts(spec.trial_dir, C.EVAL_STATE_FILE)
    assert set(evaluator) == {
        C.CONTAINER_ARTIFACT,
        C.CONTAINER_REPORT_DIR,
        "/data/val",
        "/data/tokenizer",
        f"/data/{C.DATA_MANIFEST_FILE}",
    }
    assert [dest for dest, m in evaluator.items() if m["RW"]] == [C.CONTAINER_REPORT_DIR]
    assert evaluator[C.CONTAINER_ARTIFACT]["Name"] == train[C.CONTAINER_OUT]["Name"]  # the same channel

    host = json.loads((spec.trial_dir / C.TRAIN_STATE_FILE).read_text())["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["Memory"] == host["MemorySwap"]
