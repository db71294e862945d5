"""A trial's compute share counts only the CPU time the host denied it: a task waiting on a run queue
behind someone else's work lowers it; a task that sleeps, runs one thread, or queues behind its own
threads on its allotment does not.

Accidents this defeats: a candidate recorded as slow (or as a timeout) because other work on the host
took its CPUs; and the opposite mistake, a candidate that sleeps or is single-threaded being re-run
forever as "starved". The arithmetic is checked on synthetic counters, the reading on real host
processes (a busy loop sharing one CPU with two hogs must show a low share).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandbox.compute import (
    MIN_DEMAND_S,
    ComputeMeter,
    ComputeReport,
    ProcessTree,
    TaskGroup,
    cgroup_dir,
    parse_cpu_stat,
    parse_schedstat,
    source_for_pid,
)
from sandbox.constants import Status
from sandbox.verdict import classify_starved

S = 1_000_000_000  # ns


class Counters:
    """A TaskSource whose counters the test advances by hand."""

    how = "synthetic"

    def __init__(self) -> None:
        self.tasks: dict[int, tuple[int, int]] = {}

    def schedstats(self) -> Iterable[tuple[int, tuple[int, int]]]:
        return list(self.tasks.items())

    def throttling(self) -> tuple[int, float] | None:
        return None

    def add(self, tid: int, cpu_s: float, wait_s: float) -> None:
        c, w = self.tasks.get(tid, (0, 0))
        self.tasks[tid] = (c + int(cpu_s * S), w + int(wait_s * S))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def meter(source: Counters, clock: Clock, cpus: float) -> ComputeMeter:
    m = ComputeMeter(source, cpus, clock=clock)
    m.start(thread=False)
    return m


def test_parsing_reads_schedstat_and_both_cgroup_cpu_stat_formats() -> None:
    assert parse_schedstat("531486096 1011001 32\n") == (531486096, 1011001)
    assert parse_schedstat("garbage") is None
    v1 = "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n"
    v2 = "usage_usec 1\nnr_periods 10\nnr_throttled 3\nthrottled_usec 1500000\n"
    assert parse_cpu_stat(v1) == (4, 2.5)
    assert parse_cpu_stat(v2) == (3, 1.5)
    assert parse_cpu_stat("usage_usec 5\n") is None


def test_waiting_behind_other_work_lowers_the_share() -> None:
    source, clock = Counters(), Clock()
    m = meter(source, clock, cpus=2)
    for _ in range(10):  # two threads, each on a CPU a third of the time and queued the rest
        clock.t += 1.0
        source.add(1, 1 / 3, 2 / 3)
        source.add(2, 1 / 3, 2 / 3)
        m.sample()
    report = m.stop()
    assert report.share == pytest.approx(1 / 3, abs=1e-3)
    assert report.denied_s == pytest.approx(2 * 10 * 2 / 3, abs=1e-2)
    assert report.starved(0.85)


def test_threads_queued_behind_their_own_siblings_are_not_starved() -> None:
    source, clock = Counters(), Clock()
    m = meter(source, clock, cpus=2)
    for _ in range(10):  # eight threads on two CPUs: every CPU busy, each thread waits 3/4 of the time
        clock.t += 1.0
        for tid in range(8):
            source.add(tid, 0.25, 0.75)
        m.sample()
    report = m.stop()
    assert report.share == pytest.approx(1.0)
    assert report.wait_s == pytest.approx(60.0, abs=1e-2)  # the waiting is recorded, not counted
    assert not report.starved(0.85)


def test_sleeping_and_single_threaded_candidates_are_not_starved() -> None:
    source, clock = Counters(), Clock()
    m = meter(source, clock, cpus=2)
    for i in range(20):  # one thread, busy half the time and asleep the other half, never queued
        clock.t += 1.0
        source.add(1, 0.5 if i % 2 else 0.0, 0.0)
        m.sample()
    report = m.stop()
    assert report.share == 1.0 and not report.starved(0.85)


@pytest.mark.parametrize("own_evaluator", [True, False])
def test_the_trials_own_prewarming_evaluator_is_not_the_host_starving_it(own_evaluator: bool) -> None:
    """One CPU: TRAIN (always runnable) gets 0.8 of it, the other 0.2 goes to a pre-warming EVAL.

    That EVAL is the trial's own work (the Docker engine starts it inside TRAIN's clock, on the same
    cpuset): as a member of TRAIN's TaskGroup nothing was denied. The same 0.2 taken by someone else
    (a process outside the group) is the host starving the trial.
    """
    train, evaluator, clock = Counters(), Counters(), Clock()
    group = TaskGroup(train)
    m = ComputeMeter(group, 1.0, clock=clock)
    m.start(thread=False)
    if own_evaluator:
        group.add(evaluator)
    for _ in range(20):
        clock.t += 1.0
        train.add(1, 0.8, 0.2)
        evaluator.add(100, 0.2, 0.8)
        m.sample()
    report = m.stop()
    if own_evaluator:
        assert report.share == pytest.approx(1.0) and not report.starved(0.85)
        assert report.prewarm_cpu_s == pytest.approx(4.0) and report.cpu_s == pytest.approx(20.0)
        assert "pre-warming EVAL" in report.summary()
    else:
        assert report.share == pytest.approx(0.8) and report.starved(0.85)
        assert report.prewarm_cpu_s == 0.0


def test_a_thread_that_exited_between_samples_still_counts() -> None:
    source, clock = Counters(), Clock()
    m = meter(source, clock, cpus=1)
    clock.t += 1.0
    source.add(7, 0.2, 0.8)  # a worker thread, starved, then gone
    m.sample()
    del source.tasks[7]
    clock.t += 1.0
    source.add(1, 1.0, 0.0)
    report = m.stop()
    assert report.tasks == 2
    assert report.cpu_s == pytest.approx(1.2) and report.wait_s == pytest.approx(0.8)
    assert report.share == pytest.approx(1.2 / 2.0)


def test_a_short_phase_is_recorded_but_never_called_starved() -> None:
    report = ComputeReport(share=0.2, cpu_s=0.1, wait_s=0.4)
    assert not report.starved(0.85)  # half a second of demand says nothing
    assert classify_starved(report, 0.85) is None
    long = ComputeReport(share=0.5, cpu_s=5, wait_s=5, denied_s=5, allotment_cpus=2, wall_s=5)
    status, reason = classify_starved(long, 0.85) or (None, "")
    assert status is Status.STARVED and "0.50" in reason
    assert classify_starved(long, 0.0) is None  # 0 turns the rule off
    assert classify_starved(ComputeReport(share=None, how="unavailable: x"), 0.85) is None


# --------------------------------------------------------------------------- real host processes

BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {s}: pass\n"


@contextmanager
def process(code: str, cpus: set[int] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        if cpus is not None:
            os.sched_setaffinity(proc.pid, cpus)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def measure(proc: subprocess.Popen[bytes], cpus: float, seconds: float) -> ComputeReport:
    m = ComputeMeter(ProcessTree(proc.pid), cpus, interval_s=0.1)
    m.start()
    time.sleep(seconds)
    return m.stop()


def test_a_process_sharing_its_cpu_with_two_hogs_shows_a_low_share() -> None:
    cpu = min(os.sched_getaffinity(0))
    with process(BUSY.format(s=30), {cpu}), process(BUSY.format(s=30), {cpu}):
        with process(BUSY.format(s=30), {cpu}) as candidate:
            report = measure(candidate, cpus=1, seconds=2.5)
    assert report.samples >= 10 and report.tasks >= 1
    assert report.cpu_s > 0.1 and report.wait_s > 0.5
    assert report.share is not None and report.share < 0.6  # about 1/3 with two hogs
    assert report.starved(0.85)


def test_a_sleeping_process_accumulates_no_wait() -> None:
    with process("import time\nfor _ in range(100): time.sleep(0.05)\n") as sleeper:
        report = measure(sleeper, cpus=len(os.sched_getaffinity(0)), seconds=1.5)
    assert report.samples >= 5
    # Asleep, it is never runnable for long: a few wake-ups may queue on a busy host, but the demand
    # stays far below what the share is judged on, so it is never starved.
    assert report.wait_s < 0.2 and report.demand_s < MIN_DEMAND_S
    assert not report.starved(0.85)


def test_the_process_tree_includes_children_and_their_threads() -> None:
    code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "subprocess.run([sys.executable, '-c', 'import time; time.sleep(5)'])\n"
    )
    with process(code) as parent:
        deadline = time.monotonic() + 10
        tids: set[int] = set()
        while time.monotonic() < deadline and len(tids) < 3:
            tids = {tid for tid, _ in ProcessTree(parent.pid).schedstats()}
            time.sleep(0.05)
    assert parent.pid in tids and len(tids) >= 3  # main thread, its sleeper thread, the child


def test_a_pid_that_is_not_the_container_is_refused() -> None:
    why = source_for_pid(os.getpid(), container_id="0123456789abcdef" * 4)
    assert isinstance(why, str) and "not the container's" in why
    assert isinstance(source_for_pid(0, container_id="x"), str)
    assert isinstance(source_for_pid(os.getpid()), ProcessTree)  # a plain process: its tree


def test_the_cgroup_found_for_a_pid_lists_that_pid() -> None:
    group = cgroup_dir(os.getpid())
    if group is None:
        pytest.skip("no cgroup with the cpu controller is mounted here")
    tasks = group / ("cgroup.threads" if (group / "cgroup.threads").exists() else "tasks")
    assert str(os.getpid()) in tasks.read_text(encoding="ascii").split()


CONTAINER = "3f4e" * 16  # a container id as the engine reports it


def fake_host(tmp_path: Path, *, v2: bool) -> Path:
    """A /proc and a cgroup tree as a Docker host shows them for one container (pid 4242, threads 4242
    and 4243), on cgroup v1 (cpu,cpuacct controller) or v2 (unified, systemd driver)."""
    proc, root = tmp_path / "proc", tmp_path / "sys-fs-cgroup"
    if v2:
        group = root / "system.slice" / f"docker-{CONTAINER}.scope"
        mount = f"35 24 0:30 / {root} rw - cgroup2 cgroup2 rw\n"
        membership = f"0::/system.slice/docker-{CONTAINER}.scope\n"
        (group).mkdir(parents=True)
        (group / "cgroup.threads").write_text("4242\n4243\n")
        (group / "cpu.stat").write_text("usage_usec 9\nnr_periods 5\nnr_throttled 2\nthrottled_usec 250000\n")
    else:
        group = root / "docker" / CONTAINER
        mount = f"32 31 0:29 / {root} rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        membership = f"11:memory:/docker/{CONTAINER}\n4:cpu,cpuacct:/docker/{CONTAINER}\n0::/\n"
        group.mkdir(parents=True)
        (group / "tasks").write_text("4242\n4243\n")
        (group / "cpu.stat").write_text("nr_periods 5\nnr_throttled 2\nthrottled_time 250000000\n")
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n" + mount)
    for tid, line in ((4242, "2000000000 500000000 10\n"), (4243, "1000000000 0 3\n")):
        (proc / str(tid)).mkdir()
        (proc / str(tid) / "schedstat").write_text(line)
    (proc / "4242" / "cgroup").write_text(membership)
    return proc


@pytest.mark.parametrize("v2", [False, True], ids=["cgroup-v1", "cgroup-v2"])
def test_a_containers_tasks_and_throttling_are_read_from_its_own_cgroup(tmp_path: Path, v2: bool) -> None:
    proc = fake_host(tmp_path, v2=v2)
    source = source_for_pid(4242, container_id=CONTAINER, proc=proc)
    assert not isinstance(source, str), source
    assert CONTAINER in source.how
    assert dict(source.schedstats()) == {4242: (2 * S, S // 2), 4243: (S, 0)}
    assert source.throttling() == (2, 0.25)
    assert isinstance(source_for_pid(4242, container_id="someone-else", proc=proc), str)
    assert isinstance(source_for_pid(777, container_id=CONTAINER, proc=proc), str)  # not visible here
