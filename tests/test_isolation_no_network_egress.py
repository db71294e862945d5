"""Property: a TRAIN container has no network path at all: not to the internet, not to the host, no DNS.

Attack defeated: a candidate that uploads the validation split's tokens it could guess, downloads
reference weights, phones a score home, or talks to a service on the host (an engine API, the
controller, a metadata endpoint). Preflight's probe connects from inside the production TRAIN
container to 1.1.1.1:443 and 8.8.8.8:53, to the host on the engine's gateway address where a live
listener (proven reachable from the host) waits and counts arrivals, sends UDP, and resolves names.
"""

from __future__ import annotations

import pytest

from sandbox.preflight.facts import PreflightResult

pytestmark = pytest.mark.docker


def test_no_tcp_or_udp_path_out_and_only_loopback(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_network_egress")
    ev = check.evidence
    assert ev["interfaces"] == ["lo"]
    assert ev["host_addresses_armed"], "the host listener was not reachable: the host path is unproven"
    hosts_tried = {host for host, _, _ in ev["connect"]}
    assert set(ev["host_addresses_armed"]) <= hosts_tried and "1.1.1.1" in hosts_tried
    assert all(result not in ("connected", "sent") for _, _, result in ev["connect"] + ev["udp"]), ev
    assert ev["listener_accepted"] == []
    assert check.passed, check.detail


def test_names_do_not_resolve(preflight_result: PreflightResult) -> None:
    check = preflight_result.check("no_dns")
    assert check.evidence["dns"], "no name was tried"
    assert all(str(r).startswith("error:") for r in check.evidence["dns"].values()), check.evidence
    assert check.passed, check.detail
