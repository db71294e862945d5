"""A Ray cluster started by the launcher refuses a driver that does not hold its token.

The attack: the cluster's GCS listens on every interface (Ray 2.60; see
test_cluster_exposes_only_the_documented_listeners.py), and any driver it accepts can run code on
every node with the Ray worker's rights, the engine socket included. Token authentication is the
defence, so: a driver with a wrong token is refused by the GCS (`InvalidAuthToken`; it retries for
20 to 40 s before giving up, which is this test's cost; a driver with no token at all was seen
refused the same way); the same driver with the cluster's token file connects (the control, so
the refusal is the token's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox.cluster.local import LocalCluster

CONNECT = "import ray, sys; ray.init(address=sys.argv[1]); print('CONNECTED', ray.cluster_resources()['trial_slot'])"


def _driver(address: str, home: Path, auth: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"} | auth  # no ~/.ray/auth_token to fall back on
    return subprocess.run(
        [sys.executable, "-c", CONNECT, address], env=env, capture_output=True, text=True, timeout=240
    )


def test_a_driver_without_the_token_is_refused(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    wrong = _driver(ray_cluster.address, tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode != 0 and "CONNECTED" not in wrong.stdout
    assert "InvalidAuthToken" in wrong.stderr, wrong.stderr[-2000:]

    right = _driver(ray_cluster.address, tmp_path, ray_cluster.env())
    assert right.returncode == 0 and "CONNECTED" in right.stdout, right.stderr[-2000:]
