"""The evaluator started beside TRAIN judges only what the output channel holds once TRAIN has exited.

Property: DockerSandbox starts EVAL while TRAIN runs (pre-warm), but releases it (its go file) only
after TRAIN's exit has been observed and the channel inspected; before that the evaluator reads
neither the artifact nor the validation data. So what TRAIN shows the channel while it runs cannot
reach the verdict, and a candidate cannot present one artifact to the evaluator and swap in another.
Attack defeated: `late_artifact` keeps junk in the channel for its first seconds (while the
evaluator is long since ready and waiting) and writes its real export only at the end. An evaluator
released early, or one that looks before its go, would reject the junk; this one must score the real
graph. The pre-warm must also not change what is mounted (test_sandbox_mounts_follow_the_trial_contract).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox.constants import Status
from sandbox.engine.docker import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker


def test_the_evaluator_scores_the_artifact_train_left_not_the_one_it_showed(
    docker_sandbox: DockerSandbox, make_spec: Callable[..., TrialSpec]
) -> None:
    assert docker_sandbox.prewarm_eval
    verdict = docker_sandbox.run_trial(make_spec("late_artifact", time_budget_s=120))
    assert verdict.status is Status.OK, verdict.reason
    assert "eval_go_s" in verdict.timings  # the evaluator ran beside TRAIN and was released by its go
    assert verdict.timings["train_wall_s"] >= 6  # TRAIN kept the junk in the channel this long
