"""Invariant: registering gVisor in the engine's daemon.json adds the runsc runtime and changes nothing else,
and doing it again changes nothing.

What it protects: an admin's daemon settings (log driver, registry mirrors, data root, other runtimes
such as nvidia) silently clobbered by `make engine`, and an engine restarted on every CI run because
the file was rewritten though nothing changed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "sandbox" / "scripts" / "ensure-engine.sh"


def register(tmp_path: Path, daemon_json: Path) -> str:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    runsc = fake_bin / "runsc"
    runsc.write_text("#!/bin/sh\nexit 0\n")
    runsc.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "DAEMON_JSON": str(daemon_json)}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--config-only"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


def test_runsc_is_added_beside_existing_settings(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    before = {
        "log-driver": "json-file",
        "registry-mirrors": ["http://mirror"],
        "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
    }
    daemon.write_text(json.dumps(before))
    assert register(tmp_path, daemon) == "changed"
    after = json.loads(daemon.read_text())
    runsc = after["runtimes"].pop("runsc")
    assert after == before
    assert runsc["path"] == str(tmp_path / "bin" / "runsc")
    assert runsc["runtimeArgs"] == ["--platform=ptrace", "--network=none"]


def test_a_second_registration_leaves_the_file_untouched(tmp_path: Path) -> None:
    daemon = tmp_path / "etc" / "docker" / "daemon.json"  # absent, folder included
    assert register(tmp_path, daemon) == "changed"
    first = daemon.read_bytes()
    mtime = daemon.stat().st_mtime_ns
    assert register(tmp_path, daemon) == "same"
    assert daemon.read_bytes() == first and daemon.stat().st_mtime_ns == mtime


def test_a_daemon_json_that_is_not_an_object_is_left_for_a_human(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon.json"
    daemon.write_text("[1, 2]")
    with pytest.raises(subprocess.CalledProcessError):
        register(tmp_path, daemon)
    assert daemon.read_text() == "[1, 2]"
