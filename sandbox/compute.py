"""How much of its compute a trial actually got, measured from the host.

The budget is wall-clock, so a candidate's score depends on how much CPU it was given: on a loaded
host the same train.py trains fewer steps and scores worse. This module measures, from outside the
candidate, the CPU time its tasks were denied, so that a trial the host starved is not recorded as
the candidate's result (`Status.STARVED`, see sandbox/verdict.py).

Per task of the trial (the container's cgroup, else the process tree) it reads time on a CPU and
time runnable but waiting (`/proc/<pid>/task/<tid>/schedstat`); `ComputeMeter` turns them into
`compute_share` = cpu / (cpu + denied), where only waiting up to the trial's allotment of CPUs counts
as denied (the reads and the arithmetic: docs/ARCHITECTURE.md, "Measurements and history").
Deliberate properties and limits:
- Sampled every `interval_s` (threads come and go); each task's counters are kept at the largest
  value seen, so a thread that exited still counts, up to its last sample. What a task did after
  the last sample before it exited is not seen (at most one interval).
- A burst of more runnable threads than CPUs inside one interval is averaged over that interval.
- Time stolen from a virtual machine's vCPUs by its hypervisor is invisible here (it counts as time
  on CPU); GPUs shared with other processes are not measured yet.
- The trial's own pre-warming EVAL container (sandbox/engine/docker.py starts it inside TRAIN's
  clock, on the same cpuset, at a lower CPU weight) is part of the trial: its tasks join the meter's
  `TaskGroup`, so TRAIN queueing behind it is the trial using its allotment, not the host denying it.
  Its CPU is recorded apart (`prewarm_cpu_s`).
- When the controller cannot see the trial's tasks (it runs in another pid namespace, or /proc is
  not readable), `measure` returns a report with `share=None` and says why: unknown is never
  treated as starved.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

INTERVAL_S = 0.25
MIN_DEMAND_S = 1.0  # below this much runnable time the share is recorded but never judged starved
NS = 1e9


class ComputeReport(BaseModel):
    """What one phase of a trial got: the share of its allotment it could use, and the evidence."""

    model_config = ConfigDict(frozen=True)

    share: float | None  # None: not measured (see `how`)
    cpu_s: float = 0.0  # time on a CPU, summed over the tasks
    wait_s: float = 0.0  # runnable but waiting on a run queue, summed over the tasks
    denied_s: float = 0.0  # the part of the waiting the allotment would have served
    throttled_s: float | None = None  # the cgroup's CPU-quota throttling (cpu.stat), when readable
    nr_throttled: int | None = None
    allotment_cpus: float = 0.0
    wall_s: float = 0.0
    samples: int = 0
    tasks: int = 0  # distinct tasks (threads) seen
    prewarm_cpu_s: float = 0.0  # of cpu_s: the trial's own pre-warming EVAL (a `TaskGroup` member)
    how: str = ""  # where the numbers came from, or why there are none

    @property
    def demand_s(self) -> float:
        return self.cpu_s + self.wait_s

    def starved(self, min_share: float) -> bool:
        """True when the phase got less than `min_share` of its compute and ran long enough to tell."""
        return self.share is not None and self.share < min_share and self.demand_s >= MIN_DEMAND_S

    def summary(self) -> str:
        if self.share is None:
            return f"compute not measured ({self.how})"
        own = f", {self.prewarm_cpu_s:.1f} s of it the pre-warming EVAL" if self.prewarm_cpu_s else ""
        return (
            f"compute share {self.share:.2f}: {self.cpu_s:.1f} s on CPU{own}, {self.wait_s:.1f} s waiting for "
            f"one ({self.denied_s:.1f} s denied on an allotment of {self.allotment_cpus:g} CPUs) over "
            f"{self.wall_s:.1f} s"
        )


# --------------------------------------------------------------------------- reading /proc and cgroups


def parse_schedstat(text: str) -> tuple[int, int] | None:
    """(ns on CPU, ns waiting on a run queue) from a schedstat line, or None when it is not one."""
    fields = text.split()
    if len(fields) < 2:
        return None
    try:
        return int(fields[0]), int(fields[1])
    except ValueError:
        return None


def read_schedstat(path: Path) -> tuple[int, int] | None:
    try:
        return parse_schedstat(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError):
        return None  # the task exited between listing and reading


def parse_cpu_stat(text: str) -> tuple[int, float] | None:
    """(nr_throttled, throttled seconds) from a cgroup cpu.stat (v1: throttled_time ns; v2: throttled_usec)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    if "nr_throttled" not in values:
        return None
    if "throttled_time" in values:
        return values["nr_throttled"], values["throttled_time"] / NS
    if "throttled_usec" in values:
        return values["nr_throttled"], values["throttled_usec"] / 1e6
    return None


class TaskSource(Protocol):
    """Where a trial's tasks are: their schedstat files, and its throttling counters if any."""

    how: str

    def schedstats(self) -> Iterable[tuple[int, tuple[int, int]]]: ...
    def throttling(self) -> tuple[int, float] | None: ...


@dataclass
class CgroupTasks:
    """Every task of one cgroup (the container's), read from its task list."""

    dir: Path
    proc: Path = Path("/proc")
    how: str = ""

    def __post_init__(self) -> None:
        self.how = self.how or f"schedstat of the tasks of cgroup {self.dir}"

    def _tids(self) -> list[int]:
        for name in ("cgroup.threads", "tasks"):  # v2, v1
            try:
                text = (self.dir / name).read_text(encoding="ascii")
            except OSError:
                continue
            return [int(t) for t in text.split() if t.isdigit()]
        return []

    def schedstats(self) -> Iterable[tuple[int, tuple[int, int]]]:
        for tid in self._tids():
            value = read_schedstat(self.proc / str(tid) / "schedstat")
            if value is not None:
                yield tid, value

    def throttling(self) -> tuple[int, float] | None:
        try:
            return parse_cpu_stat((self.dir / "cpu.stat").read_text(encoding="ascii"))
        except OSError:
            return None


@dataclass
class ProcessTree:
    """Every thread of a process and of its descendants (found through /proc/<pid>/task/<tid>/children)."""

    root: int
    proc: Path = Path("/proc")
    how: str = ""

    def __post_init__(self) -> None:
        self.how = self.how or f"schedstat of the threads of process {self.root} and its descendants"

    def schedstats(self) -> Iterable[tuple[int, tuple[int, int]]]:
        todo, seen = [self.root], set[int]()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                tids = [int(t) for t in os.listdir(self.proc / str(pid) / "task") if t.isdigit()]
            except OSError:
                continue
            for tid in tids:
                task = self.proc / str(pid) / "task" / str(tid)
                value = read_schedstat(task / "schedstat")
                if value is not None:
                    yield tid, value
                try:
                    children = (task / "children").read_text(encoding="ascii").split()
                except OSError:
                    continue
                todo += [int(c) for c in children if c.isdigit()]

    def throttling(self) -> tuple[int, float] | None:
        return None


class TaskGroup:
    """The tasks of several sources measured as one trial on one allotment: the first is TRAIN's, the
    rest (`add`ed later: the pre-warming EVAL) are the trial's own helpers. Throttling is the first's.
    """

    def __init__(self, first: TaskSource) -> None:
        self.sources: list[TaskSource] = [first]
        self.how = first.how
        self.helper_tids: set[int] = set()  # tasks seen from a source other than the first
        self._lock = threading.Lock()

    def add(self, source: TaskSource) -> None:
        with self._lock:
            self.sources.append(source)
            self.how = " + ".join(s.how for s in self.sources)

    def schedstats(self) -> Iterable[tuple[int, tuple[int, int]]]:
        with self._lock:
            sources = list(self.sources)
        for k, source in enumerate(sources):
            for tid, value in source.schedstats():
                if k:
                    self.helper_tids.add(tid)
                yield tid, value

    def throttling(self) -> tuple[int, float] | None:
        return self.sources[0].throttling()


def _cgroup_mounts(mountinfo: str) -> tuple[Path | None, Path | None]:
    """(the cgroup v1 mount holding the cpu controller, the cgroup v2 mount), from /proc/self/mountinfo."""
    v1: Path | None = None
    v2: Path | None = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if len(parts) < 5 or len(rest) < 3:
            continue
        mount, fstype, options = Path(parts[4]), rest[0], rest[2].split(",")
        if fstype == "cgroup" and "cpu" in options and v1 is None:
            v1 = mount
        elif fstype == "cgroup2" and v2 is None:
            v2 = mount
    return v1, v2


def cgroup_dir(pid: int, proc: Path = Path("/proc")) -> Path | None:
    """The host directory of the cgroup holding `pid` (its cpu controller on v1), or None."""
    try:
        membership = (proc / str(pid) / "cgroup").read_text(encoding="utf-8")
        mountinfo = (proc / "self" / "mountinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    v1, v2 = _cgroup_mounts(mountinfo)
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if v1 is not None and "cpu" in controllers.split(","):
            candidate = v1 / path.lstrip("/")
            return candidate if candidate.is_dir() else None
        if v2 is not None and controllers == "" and path:
            candidate = v2 / path.lstrip("/")
            if candidate.is_dir() and (candidate / "cgroup.threads").exists():
                return candidate
    return None


def allotment(cpuset: set[int] | None, quota_cpus: float | None) -> float:
    """The CPUs a trial may use: its cpuset (else this process's affinity), capped by its quota."""
    cpus = float(len(cpuset)) if cpuset else float(len(os.sched_getaffinity(0)))
    return min(cpus, quota_cpus) if quota_cpus else cpus


# --------------------------------------------------------------------------- the meter


@dataclass
class ComputeMeter:
    """Samples a `TaskSource` in a thread from `start()` to `stop()` and computes the share (see above)."""

    source: TaskSource
    allotment_cpus: float
    interval_s: float = INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    _last: dict[int, tuple[int, int]] = field(default_factory=dict)
    _t: float = 0.0
    _t0: float = 0.0
    _cpu_ns: int = 0
    _wait_ns: int = 0
    _denied_s: float = 0.0
    _samples: int = 0
    _throttle0: tuple[int, float] | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, *, thread: bool = True) -> None:
        self._t0 = self._t = self.clock()
        self._throttle0 = self.source.throttling()
        self.sample()
        if thread:
            self._thread = threading.Thread(target=self._loop, name="compute-meter", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every task's counters once and add this interval's CPU, waiting and denied time."""
        now = self.clock()
        cpu = wait = 0
        with self._lock:
            for tid, (c, w) in self.source.schedstats():
                old = self._last.get(tid, (0, 0))
                if c < old[0] or w < old[1]:  # a new task under a reused id
                    old = (0, 0)
                cpu, wait = cpu + c - old[0], wait + w - old[1]
                self._last[tid] = (c, w)
            dt = max(0.0, now - self._t)
            demand = (cpu + wait) / NS
            owed = min(demand, self.allotment_cpus * dt)
            self._denied_s += max(0.0, owed - cpu / NS)
            self._cpu_ns += cpu
            self._wait_ns += wait
            self._samples += 1
            self._t = now

    def stop(self) -> ComputeReport:
        """Stop sampling (one last sample) and return the phase's report."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sample()
        return self.report()

    def report(self) -> ComputeReport:
        with self._lock:
            cpu_s, wait_s = self._cpu_ns / NS, self._wait_ns / NS
            denied = min(self._denied_s, wait_s)
            share = 1.0 if cpu_s + denied <= 0 else cpu_s / (cpu_s + denied)
            throttled: tuple[int, float] | None = None
            end = self.source.throttling()
            if end is not None and self._throttle0 is not None:
                throttled = (end[0] - self._throttle0[0], end[1] - self._throttle0[1])
            helpers = self.source.helper_tids if isinstance(self.source, TaskGroup) else set()
            prewarm_ns = sum(c for tid, (c, _) in self._last.items() if tid in helpers)
            return ComputeReport(
                share=round(share, 4),
                prewarm_cpu_s=round(prewarm_ns / NS, 3),
                cpu_s=round(cpu_s, 3),
                wait_s=round(wait_s, 3),
                denied_s=round(denied, 3),
                throttled_s=None if throttled is None else round(throttled[1], 3),
                nr_throttled=None if throttled is None else throttled[0],
                allotment_cpus=self.allotment_cpus,
                wall_s=round(self._t - self._t0, 3),
                samples=self._samples,
                tasks=len(self._last),
                how=self.source.how,
            )


def unmeasured(why: str) -> ComputeReport:
    return ComputeReport(share=None, how=f"unavailable: {why}")


def source_for_pid(
    pid: int, *, container_id: str | None = None, proc: Path = Path("/proc")
) -> TaskSource | str:
    """The task source for a container's (or a process's) main pid, or why there is none.

    With `container_id`, the pid's cgroup must name that container: a controller in another pid
    namespace would otherwise read some unrelated process of its own under the same number.
    """
    if pid <= 0:
        return "the engine reported no pid (the container was not running)"
    if not (proc / str(pid)).is_dir():
        return f"pid {pid} is not visible here (is the controller in another pid namespace?)"
    if container_id is None:
        return ProcessTree(pid, proc)
    try:
        membership = (proc / str(pid) / "cgroup").read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read the cgroups of pid {pid}: {exc}"
    if container_id not in membership:
        return f"pid {pid} here is not the container's (is the controller in another pid namespace?)"
    group = cgroup_dir(pid, proc)
    if group is not None and container_id in str(group):
        return CgroupTasks(group, proc)
    return ProcessTree(pid, proc)  # the container's, but its cpu cgroup is not its own: its process tree
