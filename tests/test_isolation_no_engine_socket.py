"""Property: the container engine's socket (or any socket file) is not reachable from TRAIN.

Attack defeated: a candidate that finds /var/run/docker.sock (or containerd's) and starts a privileged
container with the host's root mounted, which would end every other property at once. Preflight's probe
checks the well-known socket paths and walks the whole filesystem for socket files; the engine's record
must show no socket mounted from the host.
"""

from __future__ import annotations

import pytest

from sandbox.preflight.facts import PreflightResult

pytestmark = pytest.mark.docker


def test_no_engine_socket_anywhere(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_engine_socket")
    ev = check.evidence
    assert "/var/run/docker.sock" in ev["engine_sockets"]
    assert not any(ev["engine_sockets"].values()), ev["engine_sockets"]
    assert ev["socket_files"] == []
    assert ev["mounted_sockets"] == []
    assert check.passed, check.detail
