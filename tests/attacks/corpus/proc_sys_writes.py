"""Attack: change the host kernel's settings, or the container's own limits, through /proc and /sys.

Host-wide knobs (core_pattern and modprobe run a program as root on the host when set; the others
change the whole machine) are opened for writing and, where that works, given back the value they
already hold: a door left open is seen without changing anything. /proc/sysrq-trigger is only
opened, never written. The container's own cgroup limits are written for real, with the values
that would lift them (memory, pids, CPU quota): if that worked the candidate could take the host's
memory or processes. It also tries to lower its OOM score (so the host's OOM killer picks the
controller instead) and to write sysfs attributes. Reads of the usual leaks (/proc/kcore,
/proc/kallsyms addresses, /sys/firmware) are recorded too.

Prints `ATTACK {"writes": {path: "ok" | errno}, "oom_score_adj": {...}, "reads": {...}}`, waits three
seconds (the host samples the OOM score of the container's processes meanwhile) and exits 0 without
a model. Expected: crash; every write refused (EROFS, EACCES, EPERM; ENOENT where a path does
not exist), the OOM score not lowered (gVisor's /proc takes -1000 but keeps it in its own kernel:
the test checks from the host that no host process of the container got it), no kernel memory or
symbol address readable.
"""

import errno
import glob
import json
import os
import time


def errname(err):
    return errno.errorcode.get(err, str(err))


def write_back(path):
    """Open for writing; if that works, write back what the file holds (a no-op, but proof of access)."""
    try:
        with open(path, "rb") as f:
            current = f.read(4096)
    except OSError:
        current = None
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return errname(exc.errno)
    try:
        if current:
            os.write(fd, current)
        return "ok"
    except OSError as exc:
        return "opened, write " + errname(exc.errno)
    finally:
        os.close(fd)


def write_value(path, value):
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return errname(exc.errno)
    try:
        os.write(fd, value)
        return "ok"
    except OSError as exc:
        return "opened, write " + errname(exc.errno)
    finally:
        os.close(fd)


def open_only(path):
    try:
        os.close(os.open(path, os.O_WRONLY))
        return "ok"
    except OSError as exc:
        return errname(exc.errno)


def read_head(path, n=64):
    try:
        with open(path, "rb") as f:
            return f.read(n).decode(errors="replace")
    except OSError as exc:
        return errname(exc.errno)


writes = {}
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/proc/sys/kernel/panic",
             "/proc/sys/kernel/panic_on_oops", "/proc/sys/vm/overcommit_memory", "/proc/sys/vm/panic_on_oom",
             "/proc/sys/vm/swappiness", "/proc/sys/kernel/pid_max", "/proc/sys/fs/file-max",
             "/proc/sys/kernel/randomize_va_space", "/proc/sys/kernel/unprivileged_bpf_disabled",
             "/proc/sys/kernel/hostname", "/proc/sys/net/ipv4/ip_forward",
             "/proc/sys/net/ipv4/ping_group_range", "/sys/kernel/uevent_helper",
             "/sys/kernel/mm/transparent_hugepage/enabled", "/sys/module/apparmor/parameters/enabled",
             "/sys/power/state"):  # fmt: skip
    writes[path] = write_back(path)
for path in ("/proc/sysrq-trigger", "/proc/sys/vm/drop_caches", "/proc/sys/fs/binfmt_misc/register",
             "/proc/sys/fs/binfmt_misc/status", "/sys/kernel/debug/sched_features"):  # fmt: skip
    writes[path] = open_only(path)
# The container's own limits, lifted for real (the cgroup v1 and v2 names).
for pattern, value in (("/sys/fs/cgroup/memory/memory.limit_in_bytes", b"-1"),
                       ("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", b"-1"),
                       ("/sys/fs/cgroup/pids/pids.max", b"max"),
                       ("/sys/fs/cgroup/cpu*/cpu.cfs_quota_us", b"-1"),
                       ("/sys/fs/cgroup/memory.max", b"max"), ("/sys/fs/cgroup/pids.max", b"max"),
                       ("/sys/fs/cgroup/memory/cgroup.procs", str(os.getpid()).encode()),
                       ("/sys/fs/cgroup/memory/release_agent", b"/out/pwn")):  # fmt: skip
    for path in glob.glob(pattern) or [pattern]:
        writes[path] = write_value(path, value)
writes["/sys/fs/cgroup (mkdir)"] = "ok"
try:
    os.mkdir("/sys/fs/cgroup/memory/attack")
except OSError as exc:
    writes["/sys/fs/cgroup (mkdir)"] = errname(exc.errno)

oom = {"before": read_head("/proc/self/oom_score_adj").strip()}
oom["lower_to_-1000"] = write_value("/proc/self/oom_score_adj", b"-1000")
oom["lower_pid1"] = write_value("/proc/1/oom_score_adj", b"-1000")
oom["legacy_oom_adj"] = write_value("/proc/self/oom_adj", b"-17")
oom["after"] = read_head("/proc/self/oom_score_adj").strip()

reads = {path: read_head(path) for path in ("/proc/kcore", "/proc/kmsg", "/sys/firmware/dmi/tables/DMI")}
kallsyms = read_head("/proc/kallsyms", 4096)
addresses = [line.split()[0] for line in kallsyms.splitlines() if len(line.split()) == 3]
reads["/proc/kallsyms nonzero addresses"] = sum(1 for a in addresses if int(a, 16) != 0)
reads["/proc/kallsyms lines"] = len(addresses)

print("ATTACK " + json.dumps({"writes": writes, "oom_score_adj": oom, "reads": reads}), flush=True)
time.sleep(3)  # hold whatever OOM score it got while the host samples the container's processes
