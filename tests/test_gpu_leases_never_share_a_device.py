"""Two holders never get the same device, and every lease is given back.

A GPU (or cpuset) shared by two workers would let one candidate's memory use and run time leak into
another's numbers. These tests run the lease table with injected devices (no GPU needed): leases are
disjoint, overlapping cpusets conflict even when spelled differently, a crash (exception or
KeyboardInterrupt) inside the `with` releases, a dead holder's row is reclaimed, and several processes
acquiring at once never hold the same device at the same time.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox.engine.gpu import (
    CpuSetLeases,
    GpuDevice,
    GpuLeases,
    LeaseError,
    LeaseRecord,
    LeaseTable,
    NoFreeDevice,
)

REPO = Path(__file__).resolve().parents[1]


def _fake_gpus(n: int) -> tuple[GpuDevice, ...]:
    return tuple(GpuDevice(index=i, uuid=f"GPU-fake-{i}", name="Fake") for i in range(n))


def _table(path: Path) -> LeaseTable:
    return LeaseTable.model_validate_json(path.read_text())


def test_two_leases_get_disjoint_devices(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases.json", discover=lambda: _fake_gpus(2))
    with leases.acquire("w0") as first, leases.acquire("w1") as second:
        assert len(first) == 1 and len(second) == 1
        assert set(first).isdisjoint(second)
        assert set(first) | set(second) == {"0", "1"}
        with pytest.raises(NoFreeDevice):
            leases.acquire("w2")
    assert _table(tmp_path / "leases.json").leases == ()


def test_separate_table_objects_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    a = GpuLeases(path, ["0", "1"])
    b = GpuLeases(path, ["0", "1"])
    with a.acquire("a", count=2) as held:
        assert held == ("0", "1")
        with pytest.raises(NoFreeDevice):
            b.acquire("b")
    with b.acquire("b") as held:
        assert held == ("0",)


def test_an_exception_releases_the_lease(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases.json", ["0"])
    with pytest.raises(RuntimeError), leases.acquire("w0"):
        raise RuntimeError("trial crashed")
    with leases.acquire("w1") as held:
        assert held == ("0",)


def test_keyboard_interrupt_releases_the_lease(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases.json", ["0"])
    with pytest.raises(KeyboardInterrupt), leases.acquire("w0"):
        raise KeyboardInterrupt
    assert leases.holders() == {}


def test_release_is_idempotent_and_only_drops_its_own_rows(tmp_path: Path) -> None:
    leases = GpuLeases(tmp_path / "leases.json", ["0", "1"])
    mine = leases.acquire("w0")
    other = leases.acquire("w1")
    mine.release()
    mine.release()
    assert leases.holders() == {other.resources[0]: "w1"}
    other.release()


def test_a_dead_holders_lease_is_reclaimed(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from sandbox.engine.gpu import GpuLeases
        lease = GpuLeases({str(path)!r}, ["0"]).acquire("doomed")
        print(lease.resources[0], flush=True)
        os._exit(0)  # dies without releasing, like a SIGKILLed worker
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
    assert [r.owner for r in _table(path).leases] == ["doomed"]
    with GpuLeases(path, ["0"]).acquire("survivor") as held:
        assert held == ("0",)
        assert [r.owner for r in _table(path).leases] == ["survivor"]


def test_a_reused_pid_does_not_keep_a_stale_lease(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    leases = GpuLeases(path, ["0"])
    # Our own live pid, but recorded with a start time that is not ours: the holder that wrote the row
    # is gone and the pid now belongs to someone else.
    stale = LeaseRecord(
        resource="0", owner="old", pid=os.getpid(), start_time=1, host=leases._host, acquired_at=0.0
    )
    path.write_text(LeaseTable(leases=(stale,)).model_dump_json())
    with leases.acquire("new") as held:
        assert held == ("0",)


def test_a_live_holder_and_another_hosts_rows_are_respected(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    leases = GpuLeases(path, ["0", "1"])
    parent = os.getppid()  # alive for the whole test
    rows = (
        LeaseRecord(resource="0", owner="live", pid=parent, host=leases._host, acquired_at=0.0),
        # A pid on another host: its liveness cannot be judged from here, so it must be kept.
        LeaseRecord(resource="1", owner="remote", pid=2**22 - 1, host="other-host", acquired_at=0.0),
    )
    path.write_text(LeaseTable(leases=rows).model_dump_json())
    with pytest.raises(NoFreeDevice, match="live"):
        leases.acquire("w")
    assert {r.owner for r in _table(path).leases} == {"live", "remote"}


def test_a_corrupt_table_is_an_error_not_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    path.write_text(json.dumps({"version": 1, "leases": [{"resource": "0"}]}))
    with pytest.raises(LeaseError, match="unreadable"):
        GpuLeases(path, ["0"]).acquire("w")


def test_waiting_acquire_gets_the_device_when_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; sys.path.insert(0, {str(REPO)!r}); from sandbox.engine.gpu import GpuLeases\n"
            f"with GpuLeases({str(path)!r}, ['0']).acquire('holder'):\n"
            "    print('held', flush=True); time.sleep(0.5)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with GpuLeases(path, ["0"]).acquire("waiter", wait_s=10, poll_s=0.05) as held:
        assert held == ("0",)
    assert holder.wait(timeout=10) == 0
    assert time.monotonic() - start < 10


def test_overlapping_cpusets_conflict_even_when_spelled_differently(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    four = CpuSetLeases(path, workers=2, cpus=range(8))
    assert four.resources == ("0-3", "4-7")
    eight = CpuSetLeases(path, workers=4, cpus=range(8))
    assert eight.resources == ("0-1", "2-3", "4-5", "6-7")
    with four.acquire("big") as big:
        assert big == ("0-3",)
        with eight.acquire("small", count=2) as small:
            assert small == ("4-5", "6-7")
            with pytest.raises(NoFreeDevice):
                eight.acquire("none-left")


CONTENDER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from sandbox.engine.gpu import GpuLeases
leases = GpuLeases({path!r}, ["0", "1"])
for _ in range(3):
    with leases.acquire(f"p{{os.getpid()}}", wait_s=60, poll_s=0.01) as held:
        start = time.time()
        time.sleep(0.05)
        print(json.dumps({{"device": held[0], "start": start, "end": time.time()}}), flush=True)
"""


def test_concurrent_acquires_from_several_processes_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    code = CONTENDER.format(repo=str(REPO), path=str(path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(5)
    ]
    holds = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        holds += [json.loads(line) for line in out.splitlines()]
    assert len(holds) == 15
    for device in ("0", "1"):
        spans = sorted((h["start"], h["end"]) for h in holds if h["device"] == device)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start >= end, f"device {device} held by two processes at once"
    assert _table(path).leases == ()
