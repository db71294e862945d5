"""Property: the candidate runs as the unprivileged uid/gid 65532, in no root group, and cannot become root.

Attack defeated: a candidate relying on uid 0 inside the container (root-owned files, a container
escape that needs root, writing where only root may). Preflight's probe reports its real and effective
ids and groups and tries setuid(0).
"""

from __future__ import annotations

import pytest

from sandbox import constants as C
from sandbox.preflight.facts import PreflightResult

pytestmark = pytest.mark.docker


def test_runs_as_the_sandbox_uid_and_cannot_setuid_root(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("non_root_user")
    ev = check.evidence
    assert (ev["uid"], ev["euid"]) == (C.CONTAINER_UID, C.CONTAINER_UID)
    assert (ev["gid"], ev["egid"]) == (C.CONTAINER_GID, C.CONTAINER_GID)
    assert 0 not in ev["groups"]
    assert ev["setuid_0"] == "EPERM"
    assert check.passed, check.detail
