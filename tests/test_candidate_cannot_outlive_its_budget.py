"""The controller's clock ends every TRAIN container: SIGTERM at the budget, SIGKILL after the grace.

Property: a candidate still running at `time_budget_s` gets SIGTERM; one that ignores it is killed at
`time_budget_s + kill_grace_s`; either way the verdict is `timeout`, the measured wall time is within
the grace, and no container or volume of the trial is left on the engine.
Attacks defeated: sleeping or spinning past the budget to buy training time, monkeypatching the
candidate's own clock (it is not the one that counts), ignoring or blocking SIGTERM.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import docker
import pytest

from sandbox import constants as C
from sandbox.constants import Status
from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

SLACK_S = 1.5  # engine round trips and state polling, on a loaded 2-core CI machine


def _nothing_left(client: docker.DockerClient, trial_id: str) -> None:
    selector = {"label": f"{C.LABEL_TRIAL}={trial_id}"}
    assert client.containers.list(all=True, filters=selector) == []
    assert client.volumes.list(filters=selector) == []


def test_sleeping_past_the_budget_is_a_timeout(
    docker_sandbox: DockerSandbox, docker_client: docker.DockerClient, make_spec: Callable[..., TrialSpec]
) -> None:
    spec = make_spec("sleeper", time_budget_s=2, kill_grace_s=10)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.TIMEOUT
    wall = verdict.timings["train_wall_s"]
    assert 2 <= wall < 2 + SLACK_S  # died of SIGTERM (forwarded by docker-init), long before the grace
    state = json.loads((spec.trial_dir / C.TRAIN_STATE_FILE).read_text())["State"]
    assert state["ExitCode"] == 128 + 15
    _nothing_left(docker_client, spec.trial_id)


def test_ignoring_sigterm_still_ends_at_the_grace(
    docker_sandbox: DockerSandbox, docker_client: docker.DockerClient, make_spec: Callable[..., TrialSpec]
) -> None:
    spec = make_spec("sigterm_ignorer", time_budget_s=2, kill_grace_s=1)
    verdict = docker_sandbox.run_trial(spec)
    assert verdict.status is Status.TIMEOUT
    assert "killed" in verdict.reason and "grace" in verdict.reason
    wall = verdict.timings["train_wall_s"]
    assert 3 <= wall < 3 + SLACK_S
    state = json.loads((spec.trial_dir / C.TRAIN_STATE_FILE).read_text())["State"]
    assert state["ExitCode"] == 128 + 9
    assert "ignoring SIGTERM" in (spec.trial_dir / C.TRAIN_LOG_FILE).read_text()  # it really ran
    _nothing_left(docker_client, spec.trial_id)
