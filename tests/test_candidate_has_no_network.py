"""TRAIN has no network at all: no route out, no route to the host, no DNS; only loopback.

Property: TCP to public addresses and to the host through the docker0 gateway (where an engine API,
a metadata service or the controller could listen) fails, even to a port the host itself reaches
through that address; UDP cannot be sent, names do not resolve, and the only interface is `lo`.
Attacks defeated: exfiltrating the candidate's findings or the data, downloading reference weights to
"train" instantly, talking to the Docker API or any host service to escape.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.docker_backend import DockerSandbox
from sandbox.verdict import TrialSpec

pytestmark = pytest.mark.docker

PROBE = Path(__file__).parent / "candidates" / "network_probe.py"


def test_no_network_from_train(
    docker_sandbox: DockerSandbox,
    docker_client: docker.DockerClient,
    make_spec: Callable[..., TrialSpec],
    tmp_path: Path,
) -> None:
    gateway = _docker0_gateway(docker_client)
    # A listener the host itself reaches through the gateway address: the control showing that a
    # failure from TRAIN is the sandbox's doing, not an empty port.
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    try:
        with socket.create_connection((gateway, port), timeout=5):
            pass
        targets = [("1.1.1.1", 443), ("8.8.8.8", 53), (gateway, port), (gateway, 2375), (gateway, 2376)]
        results = _probe(docker_sandbox, make_spec, tmp_path, targets)
    finally:
        listener.close()

    for host, target_port in targets:
        outcome = results[f"tcp {host}:{target_port}"]
        assert outcome != "connected", f"TRAIN reached {host}:{target_port}"
        assert outcome.startswith("OSError")
    assert results["udp 8.8.8.8:53"] != "sent"
    assert results["dns example.com"].startswith(("gaierror", "OSError"))
    assert results["interfaces"] == ["lo"]


def _docker0_gateway(client: docker.DockerClient) -> str:
    """The default bridge's gateway: the host's address as containers on that bridge see it."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(ipaddress.ip_network(config["Subnet"])[1])  # older engines omit it; docker0 takes the first


def _probe(
    sandbox: DockerSandbox,
    make_spec: Callable[..., TrialSpec],
    tmp_path: Path,
    targets: list[tuple[str, int]],
) -> dict[str, Any]:
    source = PROBE.read_text().replace(
        "TARGETS: list[tuple[str, int]] = []", f"TARGETS: list[tuple[str, int]] = {targets!r}"
    )
    assert repr(targets) in source
    candidate = tmp_path / "network_probe.py"
    candidate.write_text(source)
    verdict = sandbox.run_trial(make_spec(candidate, time_budget_s=30))
    log = Path(verdict.logs["train"]).read_text()
    results: dict[str, Any] = json.loads(log.split("NET ", 1)[1].splitlines()[0])
    return results
