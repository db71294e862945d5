"""Device discovery and the file-locked lease table that gives each worker its own GPUs (or CPUs).

Parallel workers on one host must never train on the same device: two candidates sharing a GPU
would each see the other's memory use and time, and their numbers would no longer mean anything.
Every worker therefore takes a lease before starting a trial and hands the leased ids to the
container (`TrialSpec.gpu_ids` -> explicit `device_ids`, never "all").

Deliberate properties:
- One JSON table on disk, read and rewritten only while holding a `filelock.FileLock`, and replaced
  atomically (`atomic_write`), so concurrent processes never see a half-written table and never hand
  the same device to two holders.
- Conflicts are computed on *atoms* (a GPU id, or each single CPU of a cpuset), not on names: a
  lease on cpuset "0-3" blocks a later request for "2-5" even though the strings differ. Each row
  records its kind, so one host table serves GPU and cpuset leases (`--workers N`: a GPU per worker
  on the gpu profile, a cpuset per worker otherwise) and GPU "0" never blocks CPU 0.
- A lease is released on every exit path of its `with` block (exception, KeyboardInterrupt). A
  process that dies without releasing (SIGKILL, power loss of the controller) leaves a stale row;
  the next acquirer reclaims it when the holder's pid is gone or belongs to a different process now
  (pid reuse is detected by the process start time). Rows from another host are never reclaimed:
  their pids mean nothing here.
- Discovery asks NVML (pynvml) first, then `nvidia-smi`, and otherwise reports no GPUs; it never
  guesses. Tests inject the discovery function.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import filelock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.incontainer.fileio import atomic_write
from sandbox.verdict import SandboxError

log = logging.getLogger(__name__)

TABLE_VERSION = 1
NVIDIA_SMI_TIMEOUT_S = 15.0


class LeaseError(SandboxError):
    """The lease table could not be used (corrupt file, lock not obtained)."""


class NoFreeDevice(LeaseError):
    """Every matching device is leased by a live holder (and stayed so for the whole wait)."""


class GpuDevice(BaseModel):
    """One GPU as the driver reports it. `id` is what goes into the container's device_ids."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    uuid: str = ""
    name: str = ""

    @property
    def id(self) -> str:
        return str(self.index)


class LeaseRecord(BaseModel):
    """One held resource in the table: who holds it and how to tell whether the holder still lives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str
    kind: str = "gpu"  # "gpu" | "cpuset": one table may hold both (rows of earlier versions are GPUs)
    owner: str
    pid: int = Field(gt=0)
    start_time: int | None = None  # the holder's start time in clock ticks since boot (Linux /proc)
    host: str
    acquired_at: float


class LeaseTable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = TABLE_VERSION
    leases: tuple[LeaseRecord, ...] = ()


# --------------------------------------------------------------------------- discovery


def discover_gpus() -> tuple[GpuDevice, ...]:
    """The host's GPUs: NVML if pynvml imports and initialises, else `nvidia-smi`, else none."""
    devices = _discover_nvml()
    if devices is None:
        devices = _discover_nvidia_smi()
    log.debug("discovered GPUs: %s", devices)
    return devices


def _discover_nvml() -> tuple[GpuDevice, ...] | None:
    """None when NVML is not usable here (module or driver library missing), so the caller falls back."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML not usable (%s); falling back to nvidia-smi", exc)
        return None
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            devices.append(
                GpuDevice(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                )
            )
        return tuple(devices)
    finally:
        pynvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _discover_nvidia_smi(executable: str = "nvidia-smi") -> tuple[GpuDevice, ...]:
    path = shutil.which(executable)
    if path is None:
        return ()
    try:
        proc = subprocess.run(
            [path, "--query-gpu=index,uuid,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi could not be run (%s); assuming no GPUs", exc)
        return ()
    if proc.returncode != 0:
        # nvidia-smi exits non-zero when the driver is installed but no device is present.
        log.warning("nvidia-smi exited %d (%s); assuming no GPUs", proc.returncode, proc.stderr.strip())
        return ()
    return parse_nvidia_smi_csv(proc.stdout)


def parse_nvidia_smi_csv(text: str) -> tuple[GpuDevice, ...]:
    """Parse `nvidia-smi --query-gpu=index,uuid[,name] --format=csv,noheader` output."""
    devices = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        if not row or not row[0].strip():
            continue
        devices.append(
            GpuDevice(
                index=int(row[0]),
                uuid=row[1].strip() if len(row) > 1 else "",
                name=row[2].strip() if len(row) > 2 else "",
            )
        )
    return tuple(devices)


# --------------------------------------------------------------------------- cpusets


def host_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (respects an outer cpuset or taskset)."""
    return tuple(sorted(os.sched_getaffinity(0)))


def split_cpusets(workers: int, cpus: Sequence[int] | None = None) -> tuple[str, ...]:
    """Split the CPUs into `workers` disjoint, contiguous, near-equal cpusets ("0-3", "4-7", ...)."""
    pool = sorted(set(host_cpus() if cpus is None else cpus))
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if workers > len(pool):
        raise ValueError(f"cannot split {len(pool)} CPUs into {workers} disjoint non-empty cpusets")
    base, extra = divmod(len(pool), workers)
    sets, start = [], 0
    for i in range(workers):
        size = base + (1 if i < extra else 0)
        sets.append(format_cpuset(pool[start : start + size]))
        start += size
    return tuple(sets)


def format_cpuset(cpus: Iterable[int]) -> str:
    """Format CPUs as a cpuset string: (0, 1, 2, 5) -> "0-2,5"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpuset(spec: str) -> frozenset[int]:
    """Parse a cpuset string: "0-2,5" -> {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


# --------------------------------------------------------------------------- leases


def default_lease_path() -> Path:
    return Path.home() / ".cache" / "autoresearch" / "leases.json"


class Lease:
    """Held resources. A context manager: `with leases.acquire("w0") as ids: ...` releases on exit."""

    def __init__(self, table: _Leases, owner: str, resources: tuple[str, ...]) -> None:
        self._table = table
        self.owner = owner
        self.resources = resources
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def kind(self) -> str:
        """What the resources are: "gpu" (device ids) or "cpuset" (cpuset strings)."""
        return self._table.kind

    def release(self) -> None:
        """Give the resources back. Idempotent."""
        if not self._released:
            self._table._release(self)
            self._released = True

    def __enter__(self) -> tuple[str, ...]:
        return self.resources

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease(owner={self.owner!r}, resources={self.resources!r}, released={self._released})"


class _Leases:
    """The table logic shared by GPU and cpuset leases; subclasses say what conflicts with what."""

    kind: str = ""

    def __init__(self, path: Path | None, resources: Sequence[str], *, lock_timeout_s: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_lease_path()
        self.resources = tuple(resources)
        self.lock_timeout_s = lock_timeout_s
        self._lock = filelock.FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)
        self._host = socket.gethostname()

    def atoms(self, resource: str) -> frozenset[str]:
        raise NotImplementedError

    def acquire(self, owner: str, count: int = 1, *, wait_s: float = 0.0, poll_s: float = 0.5) -> Lease:
        """Lease `count` free resources for `owner`, waiting up to `wait_s` for holders to release.

        Raises `NoFreeDevice` if none became free in time, `LeaseError` if the table is unusable.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if count > len(self.resources):
            raise NoFreeDevice(
                f"asked for {count} {self.kind}(s) but only {len(self.resources)} exist: {self.resources}"
            )
        deadline = time.monotonic() + wait_s
        while True:
            lease = self._try_acquire(owner, count)
            if lease is not None:
                log.info("leased %s %s to %s", self.kind, ",".join(lease.resources), owner)
                return lease
            if time.monotonic() >= deadline:
                raise NoFreeDevice(
                    f"no {count} free {self.kind}(s) among {self.resources} for {owner!r}; "
                    f"holders: {self.holders()} (wait longer, or stop a worker)"
                )
            time.sleep(poll_s)

    def holders(self) -> dict[str, str]:
        """Resource -> owner of every lease of this kind (stale rows are reported, not removed, here)."""
        with self._locked():
            return {r.resource: r.owner for r in self._read().leases if r.kind == self.kind}

    def _try_acquire(self, owner: str, count: int) -> Lease | None:
        with self._locked():
            before = self._read()
            table = self._reclaim(before)
            held: set[str] = set()
            for record in table.leases:
                if record.kind == self.kind:  # GPU "0" and cpuset "0" are different things
                    held |= self.atoms(record.resource)
            chosen: list[str] = []
            for resource in self.resources:
                atoms = self.atoms(resource)
                if atoms & held:
                    continue
                chosen.append(resource)
                held |= atoms
                if len(chosen) == count:
                    break
            if len(chosen) < count:
                if table.leases != before.leases:
                    self._write(table)  # keep the reclamation even when we cannot lease
                return None
            pid = os.getpid()
            now = time.time()
            start = _process_start_time(pid)
            new = tuple(
                LeaseRecord(
                    resource=r,
                    kind=self.kind,
                    owner=owner,
                    pid=pid,
                    start_time=start,
                    host=self._host,
                    acquired_at=now,
                )
                for r in chosen
            )
            self._write(table.model_copy(update={"leases": table.leases + new}))
            return Lease(self, owner, tuple(chosen))

    def _release(self, lease: Lease) -> None:
        pid = os.getpid()
        with self._locked():
            table = self._read()
            kept = tuple(
                r
                for r in table.leases
                if not (
                    r.resource in lease.resources
                    and r.kind == self.kind
                    and r.pid == pid
                    and r.owner == lease.owner
                    and r.host == self._host
                )
            )
            self._write(table.model_copy(update={"leases": kept}))
        log.info("released %s %s from %s", self.kind, ",".join(lease.resources), lease.owner)

    def _reclaim(self, table: LeaseTable) -> LeaseTable:
        live = []
        for record in table.leases:
            if record.host == self._host and not _holder_alive(record.pid, record.start_time):
                log.warning(
                    "reclaiming %s %s from %s: pid %d is gone",
                    self.kind,
                    record.resource,
                    record.owner,
                    record.pid,
                )
                continue
            live.append(record)
        return table.model_copy(update={"leases": tuple(live)})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout as exc:
            raise LeaseError(
                f"could not lock {self._lock.lock_file} within {self.lock_timeout_s}s; "
                "is another worker stuck while holding it?"
            ) from exc
        try:
            yield
        finally:
            self._lock.release()

    def _read(self) -> LeaseTable:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return LeaseTable()
        if not text.strip():
            return LeaseTable()
        try:
            return LeaseTable.model_validate_json(text)
        except ValidationError as exc:
            # Never guess: treating a damaged table as empty could hand a busy device out twice.
            raise LeaseError(
                f"lease table {self.path} is unreadable ({exc.error_count()} errors); stop all workers and "
                f"delete it"
            ) from exc

    def _write(self, table: LeaseTable) -> None:
        atomic_write(self.path, table.model_dump_json(indent=2) + "\n", durable=False)


class GpuLeases(_Leases):
    """Leases of whole GPUs by id. `devices` None = discover them (NVML, nvidia-smi, else none)."""

    kind = "gpu"

    def __init__(
        self,
        path: Path | None = None,
        devices: Sequence[str] | None = None,
        *,
        discover: Callable[[], Sequence[GpuDevice]] = discover_gpus,
        lock_timeout_s: float = 30.0,
    ) -> None:
        ids = tuple(devices) if devices is not None else tuple(d.id for d in discover())
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate GPU ids: {ids}")
        super().__init__(path, ids, lock_timeout_s=lock_timeout_s)

    def atoms(self, resource: str) -> frozenset[str]:
        return frozenset({f"gpu:{resource}"})


class CpuSetLeases(_Leases):
    """Leases of disjoint cpusets for hosts without GPUs: the host's CPUs split into `workers` sets."""

    kind = "cpuset"

    def __init__(
        self,
        path: Path | None = None,
        workers: int = 1,
        *,
        cpus: Sequence[int] | None = None,
        lock_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(path, split_cpusets(workers, cpus), lock_timeout_s=lock_timeout_s)

    def atoms(self, resource: str) -> frozenset[str]:
        return frozenset(f"cpu:{c}" for c in parse_cpuset(resource))


# --------------------------------------------------------------------------- liveness


def _process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _holder_alive(pid: int, start_time: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    if start_time is None:
        return True
    current = _process_start_time(pid)
    return current is None or current == start_time  # a different start time: the pid was reused
