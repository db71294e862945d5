"""Property: the candidate holds no Linux capability and can never gain one (no-new-privileges).

Attack defeated: a candidate that uses CAP_CHOWN/CAP_DAC_OVERRIDE to touch files it does not own,
CAP_NET_RAW to craft packets, CAP_SYS_ADMIN to mount, or a setuid binary in the image to become root.
Preflight's probe reads its capability masks and NoNewPrivs from /proc/self/status and tries chown to
root and a raw socket.
"""

from __future__ import annotations

import pytest

from sandbox.preflight.facts import PreflightResult

pytestmark = pytest.mark.docker


def test_every_capability_set_is_empty(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_capabilities")
    ev = check.evidence
    for mask in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
        assert int(ev[mask], 16) == 0, f"{mask}={ev[mask]}"
    assert ev["chown_to_root"] == "EPERM"
    assert ev["raw_socket"] in ("EPERM", "EACCES")
    assert check.passed, check.detail


def test_no_new_privileges_is_set(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_new_privileges")
    assert check.evidence["NoNewPrivs"] == "1"
    assert check.passed, check.detail
