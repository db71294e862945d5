"""The in-container probes really observe what preflight judges: run on the host, they see planted facts.

A probe that silently observed nothing would make every property pass vacuously. These tests run the
same snippets preflight sends into the containers, on the host and on a scratch tree: the filesystem
search finds a validation shard copied under another name (by content, not by name) and a socket file;
the output filler is bounded even with no cap to stop it; the fork bomb counts its forks and reaps them;
the memory hog reports its allocations as it goes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sandbox.engine.limits import Limits, MiB
from sandbox.preflight import facts, host, limit_checks, runner
from sandbox.preflight.checks import judge_all


def _run(mode: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        runner.probe_command(mode, *args, python=sys.executable),  # exactly what the containers run
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_train_probe_finds_planted_facts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "host-data"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
        np.save(data / split / "shard_00000.npy", rng.integers(0, 2**16, 50_000, dtype=np.uint16))
    root = tmp_path / "root"
    (root / "data" / "train").mkdir(parents=True)
    shutil.copy(data / "train" / "shard_00000.npy", root / "data" / "train" / "shard_00000.npy")
    (root / "opt" / "cache").mkdir(parents=True)
    shutil.copy(data / "val" / "shard_00000.npy", root / "opt" / "cache" / "weights.bin")  # renamed copy
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "engine.sock"))
    out = tmp_path / "out"
    out.mkdir()
    writable = tmp_path / "writable"
    writable.mkdir()

    val_fps = tuple(host.fingerprints(data / "val"))
    train_fps = tuple(host.fingerprints(data / "train"))
    limits = Limits(time_budget_s=1, kill_grace_s=1, mem_limit_mb=64, output_limit_mb=2)
    params: dict[str, Any] = facts.probe_params(limits, ("127.0.0.1",), _closed_port(), val_fps, train_fps)
    params |= {
        "connect": [["127.0.0.1", _closed_port()]],
        "udp": [],
        "dns": [],
        "write_dirs": [str(writable), str(tmp_path / "missing")],
        "write_files": [str(tmp_path / "missing" / "f")],
        "scan_root": str(root),
        "data": str(root / "data"),
        "val_dir": str(root / "data" / "val"),
        "engine_sockets": [str(root / "engine.sock"), str(root / "docker.sock")],
        "out": str(out),
        "out_overshoot": 1 * MiB,
    }
    try:
        proc = _run("train", json.dumps(params))
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    obs = json.loads(proc.stdout.strip().splitlines()[-1])

    scan = obs["scan"]
    assert scan["hits"]["val"] == [str(root / "opt" / "cache" / "weights.bin")]
    assert scan["hits"]["train"] == [str(root / "data" / "train" / "shard_00000.npy")]
    assert scan["sockets"] == [str(root / "engine.sock")]
    assert scan["engine_sockets"] == {str(root / "engine.sock"): True, str(root / "docker.sock"): False}
    assert scan["data_listing"] == ["train"] and scan["val_dir_exists"] is False
    assert obs["writes"]["create"] == {str(writable): "ok", str(tmp_path / "missing"): "ENOENT"}
    assert obs["writes"]["open"] == {str(tmp_path / "missing" / "f"): "ENOENT"}
    assert obs["network"]["connect"][0][2] == "ECONNREFUSED"
    assert "lo" in obs["network"]["interfaces"]
    # No cap on this folder: the filler stops at its own bound, and says nothing stopped it.
    assert (obs["output"]["written"], obs["output"]["stopped_by"]) == (3 * MiB, None)
    assert list(out.iterdir()) == []
    assert obs["identity"]["uid"] >= 0 and "CapEff" in obs["status"]
    assert any(m["mountpoint"] == "/" for m in obs["mounts"])

    checks = {c.name: c for c in judge_all(_observed(obs, val_fps, train_fps), limits)}
    assert not checks["no_val_data"].passed and "weights.bin" in checks["no_val_data"].detail
    assert not checks["no_engine_socket"].passed
    assert not checks["output_cap"].passed


def _observed(obs: dict[str, Any], val: tuple[Any, ...], train: tuple[Any, ...]) -> facts.Observed:
    return facts.Observed(
        probe=obs,
        probe_attrs={},
        probe_log_tail="",
        pids_attrs={},
        pids_log="",
        mem_attrs={},
        mem_log="",
        timed_out=(),
        armed=(),
        listener_port=0,
        accepted=(),
        controller_secrets={},
        val_fingerprints=val,
        train_fingerprints=train,
        data_dir="/",
        host_spawn_ok=True,
    )


def test_the_fork_bomb_counts_and_reaps_its_children() -> None:
    proc = _run("pids", "40", "10")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[:2] == ["forked 16", "forked 32"]
    report = limit_checks._PidsReport.model_validate_json(lines[-1])
    assert (report.forked, report.stopped_by, report.fork_after) == (40, "cap", True)


def test_the_memory_hog_reports_as_it_allocates() -> None:
    proc = _run("mem", "8", "24")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["8", "16", "24", "survived"]
