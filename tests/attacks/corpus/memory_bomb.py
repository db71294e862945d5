"""Attack: take the host's memory, including the kinds that are easy to forget when capping a container.

Three phases, each printed as it goes: fill /dev/shm and /tmp (tmpfs pages are memory), then
memfd_create + fallocate in 64 MiB pieces (shared memory that belongs to no mapping, so it shows in
no process's RSS, and the kernel commits it without a single page fault: the fastest way to take
memory), then four worker processes that each touch 64 MiB at a time of ordinary heap (gVisor
commits memfd space lazily, so there the heap is what presses). If memory were unbounded (or swap
allowed) the host would start swapping or OOM-kill the controller and the other trials.

Prints `ATTACK {"shm_mb", "tmp_mb", "memfd_mb", "heap_mb", "total_mb"}` as it grows: only what it
knows is resident at one moment (the memfds' allocated blocks; a worker's count only while the
worker still holds it, since the OOM reaper frees a killed worker's memory before it is reaped).
When a worker dies the first process gives up too (SIGKILL to itself). Expected: oom (the kernel
kills inside the container's own cgroup at mem_limit_mb); under gVisor the engine sometimes misses
the OOM event and sees only the SIGKILL: crash, exit 137.
"""

import json
import mmap
import os
import signal
import struct
import time

STEP_MB = 64
MEMFD_MAX_MB = 4096  # past any tiny-profile limit; gVisor returns at once without committing it
WORKERS = 4  # page faults are the bottleneck of the heap phase; several processes take them in parallel
MiB = 1 << 20
state = {"shm_mb": 0, "tmp_mb": 0, "memfd_mb": 0, "heap_mb": 0}
START = time.monotonic()


def report(**extra):
    total = sum(state.values())
    elapsed = round(time.monotonic() - START, 2)
    print("ATTACK " + json.dumps(state | {"total_mb": total, "elapsed_s": elapsed} | extra), flush=True)


def fill(folder):
    """Write into a file in folder until it is full; the MiB written."""
    done = 0
    try:
        with open(os.path.join(folder, "attack-memory"), "wb") as f:
            while True:
                f.write(b"\xa5" * MiB)
                done += 1
    except OSError:
        return done


def resident_mb(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE / MiB
    except (OSError, ValueError, IndexError):
        return 0.0


def worker(index, counters):
    held = []
    while True:
        held.append(bytearray(b"\x5a") * (STEP_MB * MiB))  # written, so every page is resident
        counters[index * 8 : index * 8 + 8] = struct.pack("q", len(held) * STEP_MB)


state["shm_mb"] = fill("/dev/shm")
state["tmp_mb"] = fill("/tmp")
report()
memfds = []
while state["memfd_mb"] < MEMFD_MAX_MB:
    fd = os.memfd_create(f"attack-{len(memfds)}")
    try:
        os.posix_fallocate(fd, 0, STEP_MB * MiB)
    except OSError as exc:
        report(memfd_stopped_by=exc.strerror)
        break
    memfds.append(fd)
    state["memfd_mb"] = sum(os.fstat(m).st_blocks * 512 for m in memfds) // MiB
    report()

counters = mmap.mmap(-1, 8 * WORKERS)  # shared with the workers: what each one holds, in MiB
workers = []
for i in range(WORKERS):
    pid = os.fork()
    if pid == 0:
        worker(i, counters)
    workers.append(pid)
while True:
    counts = [struct.unpack_from("q", counters, i * 8)[0] for i in range(WORKERS)]
    if all(resident_mb(pid) >= n for pid, n in zip(workers, counts, strict=True)):
        state["heap_mb"] = max(state["heap_mb"], sum(counts))
    dead, status = os.waitpid(-1, os.WNOHANG)
    if dead:
        report(worker_died=os.waitstatus_to_exitcode(status))
        os.kill(os.getpid(), signal.SIGKILL)
    report()
    time.sleep(0.25)
