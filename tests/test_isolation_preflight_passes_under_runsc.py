"""Property: every isolation property also holds under gVisor (runsc), the strongest hardening tier.

Attack defeated: the same escapes as the other test_isolation_* files, plus kernel exploits (gVisor
serves the candidate's syscalls from a user-space kernel). A different runtime implements each limit
differently, so the whole preflight runs again with `runtime="runsc"` and the engine must report that it
really used runsc. When runsc is not registered with the engine it skips locally and fails under CI=true
(CI registers it; tests/conftest.py `require_runsc`).
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from sandbox.engine.limits import Limits
from sandbox.preflight.facts import HardeningTier
from sandbox.preflight.runner import run_preflight

pytestmark = pytest.mark.docker


def test_preflight_under_runsc(
    runsc_client: docker.DockerClient, trainer_image: str, tiny_data: Path
) -> None:
    result = run_preflight(
        runsc_client,
        Limits.for_profile("tiny", runtime="runsc"),
        tiny_data,
        profile="tiny",
        image=trainer_image,
    )
    assert result.runtime == "runsc"
    assert result.tier is HardeningTier.RUNSC
    failed = {c.name: c.detail for c in result.checks if not c.passed}
    assert failed == {}
    assert result.check("no_network_egress").evidence["interfaces"] == ["lo"]
    # gVisor contains a fork bomb either with EAGAIN or by dying as a whole (its sentry's threads share
    # the pids limit, google/gvisor#2490); either way the bomb stays below the limit and the host is fine.
    pids = result.check("pids_limit").evidence
    assert pids["runtime"] == "runsc"
    assert pids["forked"] < pids["pids_limit"]
    assert pids["stopped_by"] == "EAGAIN" or (not pids["container_survived"] and pids["exit_code"] != 0)
    assert pids["host_spawn_ok"] is True
