"""Property: the candidate can write nowhere but /tmp, its output channel and /dev/shm.

Attack defeated: a candidate that rewrites prepare.py (the metric, the dataloader), the sandbox code in
the image, its own mounted train.py or the shared training data, to change what later trials or the
evaluator see. Preflight's probe tries to create files in /, /usr, /etc, the app folder, the data
mounts and the workspace, and to open prepare.py and train.py for writing; the root mount must be ro
and / must refuse with EROFS (read-only, not merely permission denied), while the writable places,
tried the same way, must accept (so the attempt itself is known to work).
"""

from __future__ import annotations

import pytest

from sandbox import constants as C
from sandbox.preflight.facts import READ_ONLY_DIRS, READ_ONLY_FILES, WRITABLE_DIRS, PreflightResult

pytestmark = pytest.mark.docker


def test_image_and_mounts_refuse_writes(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("root_fs_read_only")
    ev = check.evidence
    assert "ro" in ev["root_mount_options"]
    assert ev["create"]["/"] == "EROFS"
    for path in READ_ONLY_DIRS:
        assert ev["create"][path] != "ok", f"{path} is writable"
    for path in READ_ONLY_FILES:
        assert ev["open"][path] != "ok", f"{path} opens for writing"
    assert ev["open"][f"{C.CONTAINER_APP}/prepare.py"] in ("EROFS", "EACCES")
    assert check.passed, check.detail


def test_the_writable_places_are_writable(preflight_result: PreflightResult) -> None:
    ev = preflight_result.check("root_fs_read_only").evidence
    assert {path: ev["create"][path] for path in WRITABLE_DIRS} == dict.fromkeys(WRITABLE_DIRS, "ok")
