"""The real canary (harness/canary_train.py) comes back `rejected` by the causality probe through the
hardened DockerSandbox, and comes back `ok`, scored, as soon as the isolation is opened (here: the
TRAIN container also mounts val/), so the run's check can fail when it must.

Property: the canary is a working control: it passes on a sound sandbox and fails on a broken one.
Attack defeated: a canary that "passes" whatever happens (a control that can never fail proves
nothing); a TRAIN container that can read the validation split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness import canary
from sandbox import constants as C
from sandbox.constants import Status
from sandbox.engine.docker import DockerSandbox, DockerTrial
from sandbox.engine.docker_config import data_mount
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def _spec(make_spec: Callable[..., TrialSpec]) -> TrialSpec:
    # A short budget: the canary ignores SIGTERM, so on a slow machine it finishes in the grace.
    return make_spec(canary.SOURCE, time_budget_s=5, kill_grace_s=90, mem_limit_mb=1024)


def test_the_canary_is_rejected_by_the_causality_probe(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    spec = _spec(make_spec)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.REJECTED, verdict.reason
    assert verdict.report is not None and verdict.report.check == canary.EXPECTED_CHECK
    assert canary.passed(verdict)
    assert canary.escapes(spec.trial_dir) == []  # it tried, and reached nothing
    assert '"escaped": []' in (spec.trial_dir / C.TRAIN_LOG_FILE).read_text()


def test_the_canary_scores_when_train_can_read_val(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DockerTrial.train_config

    def opened(self: DockerTrial, out: Any) -> dict[str, Any]:
        config = original(self, out)
        config["mounts"] = [
            *config["mounts"],
            data_mount(self.data_dir, C.VAL_DIRNAME),
        ]  # the drifted configuration
        return config

    monkeypatch.setattr(DockerTrial, "train_config", opened)
    spec = _spec(make_spec)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.OK, verdict.reason
    assert verdict.val_bpb is not None and verdict.val_bpb > 0
    assert not canary.passed(verdict)
    assert canary.got(verdict).startswith("ok (val_bpb ")
    assert [e for e in canary.escapes(spec.trial_dir) if e.startswith("val_read: /data/val/")]
