"""`make ray-local` (sandbox/cluster/local.py) starts every node with token authentication, no
dashboard, the address the user gave, and trial slots only on worker nodes.

What goes wrong without it: a cluster started without the token lets anyone who reaches its ports run
code on every node with the engine socket (root); a dashboard is one more unauthenticated HTTP
server; a wildcard `--node-ip-address` advertises nothing useful and hides where the cluster is; a
head with a trial slot runs trials next to the GCS. These tests read the exact `ray start` command
lines and environment the launcher builds, without starting Ray.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sandbox.cluster import local
from sandbox.cluster.verify import TRIAL_SLOT


def _flag(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} passed {argv.count(name)} times: {argv}"
    return argv[argv.index(name) + 1]


def test_head_has_no_slot_no_dashboard_and_binds_the_given_address(tmp_path: Path) -> None:
    argv = local.head_command(tmp_path / "ray", "10.1.2.3")
    assert argv[:3] == [local.RAY, "start", "--head"]
    assert _flag(argv, "--node-ip-address") == "10.1.2.3"
    assert json.loads(_flag(argv, "--resources")) == {TRIAL_SLOT: 0}, "the head never runs a trial"
    assert "--include-dashboard=false" in argv
    assert _flag(argv, "--temp-dir") == str(tmp_path / "ray"), "stop() finds the processes by this folder"
    assert _flag(argv, "--object-store-memory") == str(local.OBJECT_STORE_BYTES)
    assert "--disable-usage-stats" in argv
    assert "--ray-debugger-external" not in argv


def test_worker_node_has_one_slot_and_binds_the_given_address() -> None:
    argv = local.node_command("10.1.2.3:6379", "node-0", "10.1.2.4")
    assert argv[:2] == [local.RAY, "start"] and "--head" not in argv
    assert _flag(argv, "--address") == "10.1.2.3:6379"
    assert _flag(argv, "--node-ip-address") == "10.1.2.4"
    assert json.loads(_flag(argv, "--resources")) == {TRIAL_SLOT: 1}
    assert _flag(argv, "--node-name") == "node-0"
    assert "--ray-debugger-external" not in argv


def test_loopback_is_the_default() -> None:
    assert _flag(local.head_command(Path("/x")), "--node-ip-address") == "127.0.0.1"
    assert _flag(local.node_command("a:1", "n"), "--node-ip-address") == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "localhost", "example.org", ""])
def test_a_wildcard_or_a_name_is_refused(host: str) -> None:
    with pytest.raises(ValueError):
        local.head_command(Path("/x"), host)
    with pytest.raises(ValueError):
        local.node_command("a:1", "n", host)


def test_every_ray_start_gets_token_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token file is created 0600 before the head starts, and every `ray start` (head and nodes)
    runs with RAY_AUTH_MODE=token and that file; a node's cpuset travels in its environment."""
    seen: list[tuple[list[str], dict[str, str]]] = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(argv: list[str], *, env: dict[str, str], **_: object) -> Done:
        seen.append((argv, env))
        if "--head" in argv:
            (tmp_path / "ray").mkdir()
            (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
        return Done()

    monkeypatch.setattr(local.subprocess, "run", fake_run)
    monkeypatch.setattr(local.LocalCluster, "_node_id", lambda self, name: "ab" * 28)
    cluster = local.LocalCluster(tmp_path)
    cluster.start_head()
    cluster.add_node("node-0", cpuset="0-1")

    token = tmp_path / "token"
    assert stat.S_IMODE(os.stat(token).st_mode) == 0o600 and len(token.read_text()) == 64
    assert len(seen) == 2
    for _, env in seen:
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert seen[1][1]["AUTORESEARCH_NODE_CPUSET"] == "0-1"
    assert _flag(seen[1][0], "--address") == cluster.address == "10.1.2.3:6379"
    state = json.loads((tmp_path / local.STATE_FILE).read_text())
    assert state["nodes"] == {"node-0": "ab" * 28} and state["host"] == "127.0.0.1"


def test_start_refuses_a_root_that_holds_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / local.STATE_FILE).write_text("{}")
    assert local.main(["start", str(tmp_path), "2"]) == 1
    assert "stop it first" in capsys.readouterr().err
