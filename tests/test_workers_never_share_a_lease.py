"""With `--workers N`, N trials run at once and no two of them ever hold the same lease: each worker
trains on its own cpuset (or GPU), every container of its trials gets that cpuset, and every lease
is back in the table when the run ends.

The fake sandbox records, under a lock, the lease of every trial while it runs; the first two
trials meet at a barrier, so the run fails unless two workers really run at once. A pool that gave
every worker the configured limits instead of its lease's (or a lease table that handed a cpuset
out twice) makes `clashes` non-empty.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from harness.config import ConfigError, load_settings
from harness.loop import ResearchLoop
from sandbox.engine.docker import DockerTrial
from sandbox.engine.gpu import CpuSetLeases, GpuLeases, NoFreeDevice
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialSpec
from tests.test_loop_fakes_honour_the_protocols import Sleeps
from tests.workers_fakes import (
    WAIT_S,
    RecordingSandbox,
    assert_records_agree,
    leases_for,
    scored,
    workers_config,
)


def test_two_workers_run_at_once_each_on_its_own_cpuset(tmp_path: Path) -> None:
    meet = threading.Barrier(2, timeout=WAIT_S)
    met: list[str] = []

    def gate(spec: TrialSpec) -> None:
        if len(met) < 2:  # the two baseline runs: both must be running at the same time
            met.append(spec.trial_id)
            meet.wait()

    sandbox = RecordingSandbox(gate, noise=0.002)
    leases = leases_for(tmp_path, 2)
    config = workers_config(tmp_path, 2, max_trials=6)
    agent = scored(0.95, 1.2, 0.9, 1.3, 0.97, 0.8)
    summary = ResearchLoop(config, sandbox, agent, sleep=Sleeps(), leases=leases).run()

    assert summary.stopped.startswith("max_trials reached: 6"), summary.stopped
    assert sandbox.clashes == []
    assert sandbox.most_at_once == 2
    assert {s.limits.cpuset_cpus for s in sandbox.specs} == {"0", "1"}
    assert leases.holders() == {}, "every lease is released at the end"

    records = assert_records_agree(config)
    assert sum(r.kind == "candidate" for r in records) == 6, "max_trials is not overshot"
    by_worker: dict[str, set[str]] = {}
    for record in records:
        assert record.limits["cpuset_cpus"] in {"0", "1"}
        for run in record.runs:
            assert run.limits["cpuset_cpus"] == record.limits["cpuset_cpus"]
        by_worker.setdefault(record.worker, set()).add(record.limits["cpuset_cpus"])
    assert len(by_worker) == 2 and all(len(sets) == 1 for sets in by_worker.values())
    assert set.union(*by_worker.values()) == {"0", "1"}


def test_three_workers_on_gpus_each_get_one_device(tmp_path: Path) -> None:
    meet = threading.Barrier(3, timeout=WAIT_S)
    met: list[str] = []

    def gate(spec: TrialSpec) -> None:
        if len(met) < 3:  # the three baseline runs meet: three workers at once
            met.append(spec.trial_id)
            meet.wait()

    sandbox = RecordingSandbox(gate)
    leases = GpuLeases(tmp_path / "leases.json", devices=["0", "1", "2"])
    config = workers_config(tmp_path, 3, max_trials=5)
    config = config.model_copy(update={"judge": config.judge.model_copy(update={"baseline_repeats": 3})})
    summary = ResearchLoop(
        config, sandbox, scored(0.95, 1.2, 0.9, 1.3, 0.97), sleep=Sleeps(), leases=leases
    ).run()

    assert summary.stopped.startswith("max_trials reached: 5"), summary.stopped
    assert sandbox.clashes == [] and sandbox.most_at_once == 3
    assert {s.gpu_ids for s in sandbox.specs} == {("0",), ("1",), ("2",)}
    assert all(s.limits.cpuset_cpus is None for s in sandbox.specs)
    assert leases.holders() == {}
    records = assert_records_agree(config)
    assert all(len(r.gpu_ids) == 1 and all(run.gpu_ids == r.gpu_ids for run in r.runs) for r in records)


def test_every_container_of_a_trial_gets_the_lease_cpuset(tmp_path: Path) -> None:
    """TRAIN, EVAL and the holder are all created with the trial's cpuset (no engine needed)."""
    limits = Limits(time_budget_s=5, kill_grace_s=1, mem_limit_mb=512, output_limit_mb=64, cpuset_cpus="1")
    candidate = tmp_path / "train.py"
    candidate.write_text("print('hi')\n", encoding="utf-8")
    spec = TrialSpec(trial_id="t0000", candidate=candidate, trial_dir=tmp_path, profile="tiny", limits=limits)
    trial = DockerTrial(cast(Any, None), "sha256:" + "0" * 64, spec, tmp_path, tmp_path, candidate)
    volume = cast(Any, SimpleNamespace(name="vol"))
    assert trial.train_config(volume)["cpuset_cpus"] == "1"
    assert trial._eval_config(volume, volume)["cpuset_cpus"] == "1"
    assert limits.common_docker_kwargs(mem_limit_mb=64)["cpuset_cpus"] == "1"  # the holder's kwargs


def test_workers_is_a_checked_setting(tmp_path: Path) -> None:
    assert load_settings(overrides={"workers": 3}, cwd=tmp_path).workers == 3
    assert load_settings(cwd=tmp_path).workers == 1
    try:
        load_settings(overrides={"workers": 0}, cwd=tmp_path)
    except ConfigError as exc:
        assert "workers" in str(exc)
    else:
        raise AssertionError("workers = 0 was accepted")


def test_gpu_and_cpuset_leases_share_one_table_without_mixing(tmp_path: Path) -> None:
    """One host table serves a gpu-profile run and a tiny-profile run: GPU "0" is not CPU 0."""
    table = tmp_path / "leases.json"
    gpu = GpuLeases(table, devices=["0"]).acquire("gpu-run/w0")
    cpuset = CpuSetLeases(table, workers=1, cpus=[0]).acquire("tiny-run/w0")
    with pytest.raises(NoFreeDevice):
        CpuSetLeases(table, workers=1, cpus=[0]).acquire("another-run/w0")
    with pytest.raises(NoFreeDevice):
        GpuLeases(table, devices=["0"]).acquire("another-run/w0")
    gpu.release()
    assert GpuLeases(table, devices=["0"]).holders() == {}
    assert CpuSetLeases(table, workers=1, cpus=[0]).holders() == {"0": "tiny-run/w0"}
    cpuset.release()
