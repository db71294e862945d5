"""Property: a fork bomb inside TRAIN (runc) stops at the pids limit; the container and the host survive.

Attack defeated: a candidate that exhausts the host's process table, denying service to the controller,
the evaluator and other workers. Preflight's probe forks (bounded in count and time) until the kernel
refuses; the refusal must be EAGAIN just under the production pids_limit, the container must fork again
once the children are gone and exit normally, and the host must still start processes. (Under gVisor the
sandbox dies as a whole instead: test_isolation_preflight_passes_under_runsc.py.)
"""

from __future__ import annotations

import pytest

from sandbox.engine.limits import Limits
from sandbox.preflight.facts import PreflightResult
from sandbox.preflight.limit_checks import PIDS_SLACK

pytestmark = pytest.mark.docker


def test_fork_bomb_hits_eagain_at_pids_limit(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("pids_limit")
    ev = check.evidence
    pids_limit = Limits.for_profile("tiny").pids_limit
    assert ev["pids_limit"] == pids_limit
    assert ev["runtime"] == "runc"
    assert ev["stopped_by"] == "EAGAIN"
    assert ev["container_survived"] is True
    assert pids_limit - PIDS_SLACK <= ev["forked"] < pids_limit
    assert ev["fork_after"] is True
    assert ev["exit_code"] == 0
    assert ev["host_spawn_ok"] is True
    assert check.passed, check.detail
