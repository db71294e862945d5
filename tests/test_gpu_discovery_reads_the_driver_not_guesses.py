"""GPU discovery reports exactly what the driver reports, and no GPUs when there is no driver.

A guessed device list would put two workers on one GPU or point a container at a device that does not
exist. Discovery is tested with a fake `nvidia-smi` on PATH (no GPU here); cpusets split the host's CPUs
into disjoint sets.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandbox.engine import gpu
from sandbox.engine.gpu import GpuLeases, format_cpuset, parse_cpuset, parse_nvidia_smi_csv, split_cpusets


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_discover_nvml", lambda: None)


def test_nvidia_smi_output_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None) -> None:
    _fake_nvidia_smi(
        tmp_path,
        'echo "0, GPU-aaaa, NVIDIA H100 80GB HBM3"\necho "1, GPU-bbbb, NVIDIA H100 80GB HBM3"\n',
    )
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    devices = gpu.discover_gpus()
    assert [(d.id, d.uuid, d.name) for d in devices] == [
        ("0", "GPU-aaaa", "NVIDIA H100 80GB HBM3"),
        ("1", "GPU-bbbb", "NVIDIA H100 80GB HBM3"),
    ]
    assert GpuLeases(tmp_path / "l.json").resources == ("0", "1")


def test_a_failing_nvidia_smi_means_no_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None
) -> None:
    _fake_nvidia_smi(tmp_path, 'echo "No devices were found" >&2\nexit 6\n')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu.discover_gpus() == ()


def test_no_nvidia_smi_means_no_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_nvml: None) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu.discover_gpus() == ()
    assert GpuLeases(tmp_path / "l.json").resources == ()


def test_csv_without_names_and_blank_lines() -> None:
    devices = parse_nvidia_smi_csv("0, GPU-a\n\n3, GPU-d\n")
    assert [(d.index, d.uuid, d.name) for d in devices] == [(0, "GPU-a", ""), (3, "GPU-d", "")]


def test_duplicate_device_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        GpuLeases(tmp_path / "l.json", ["0", "0"])


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [
        (range(8), 2, ("0-3", "4-7")),
        (range(5), 2, ("0-2", "3-4")),
        ((0, 2, 4, 6), 2, ("0,2", "4,6")),
        (range(2), 2, ("0", "1")),
    ],
)
def test_cpusets_are_disjoint_and_cover_the_host(
    cpus: range | tuple[int, ...], workers: int, expected: tuple[str, ...]
) -> None:
    sets = split_cpusets(workers, cpus)
    assert sets == expected
    parsed = [parse_cpuset(s) for s in sets]
    assert sum(len(p) for p in parsed) == len(set(cpus))
    assert frozenset().union(*parsed) == frozenset(cpus)


def test_more_workers_than_cpus_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot split"):
        split_cpusets(3, (0, 1))


def test_cpuset_round_trip() -> None:
    assert format_cpuset((5, 0, 1, 2, 9, 10)) == "0-2,5,9-10"
    assert parse_cpuset("0-2,5,9-10") == frozenset({0, 1, 2, 5, 9, 10})
