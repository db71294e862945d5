"""Preflight fails, property by property, when the TRAIN container is really opened up.

A self-test that passes on a broken sandbox is worse than none. This runs the real preflight against the
real engine with DockerSandbox's TRAIN config deliberately weakened (bridge network, a capability added
back, a writable root filesystem, the controller's API key passed through), and checks that exactly
those properties fail, with the facts that show the hole: the container connected to the host listener,
has CAP_CHOWN in its bounding set, wrote to /var/tmp, and saw the canary key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import pytest

from sandbox.engine.docker import DockerTrial
from sandbox.engine.limits import Limits
from sandbox.preflight import facts, runner

pytestmark = pytest.mark.docker


def test_an_opened_sandbox_fails_the_matching_properties(
    docker_client: docker.DockerClient, trainer_image: str, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    production = DockerTrial.train_config

    def opened(self: DockerTrial, out: Any) -> dict[str, Any]:
        config = production(self, out)
        config |= {"network_mode": "bridge", "cap_add": ["CHOWN"], "read_only": False}
        config["environment"] = config["environment"] | {facts.CANARY_NAME: os.environ[facts.CANARY_NAME]}
        return config

    monkeypatch.setattr(DockerTrial, "train_config", opened)
    result = runner.run_preflight(
        docker_client, Limits.for_profile("tiny", runtime="runc"), tiny_data, image=trainer_image
    )
    failed = {c.name for c in result.checks if not c.passed}
    assert {
        "no_network_egress",
        "root_fs_read_only",
        "no_capabilities",
        "no_secrets_in_env",
        "hardening_flags",
    } <= failed
    assert failed <= {
        "no_network_egress",
        "no_dns",  # resolves only where the host has working DNS
        "root_fs_read_only",
        "no_capabilities",
        "no_secrets_in_env",
        "hardening_flags",
    }
    assert not result.passed

    egress = result.check("no_network_egress").evidence
    assert "eth0" in egress["interfaces"]
    assert egress["listener_accepted"], "the host listener saw no connection from the opened container"
    assert any(r == "connected" for _, _, r in egress["connect"])
    # A non-root process gets an added capability only in its bounding set (bit 0 is CAP_CHOWN).
    assert int(result.check("no_capabilities").evidence["CapBnd"], 16) & 1
    assert result.check("root_fs_read_only").evidence["create"]["/var/tmp"] == "ok"
    assert f"{facts.CANARY_NAME} in self" in result.check("no_secrets_in_env").evidence["leaks"]
