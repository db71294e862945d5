"""Attack: reach the kernel's most exploited interfaces, the classic first step of a container escape.

Through raw syscalls (ctypes) it tries to load a kernel module (init_module, finit_module), replace the
kernel (kexec_load), open a file by handle ("shocker": open_by_handle_at walks to the host's root
through a guessed handle), use the keyring (add_key, keyctl), load a BPF program, open a perf event
on the whole machine, create a userfaultfd (the usual helper for kernel races), set up io_uring,
read the kernel log, switch on process accounting, reboot, enable port I/O and set the clock. Every
argument is harmless if the call were allowed (garbage module image, invalid reboot magic, the
clock set to what it already reads, a one-instruction BPF socket filter), so a door left open is
seen without being used. If it were open, a module or kexec image would own the host, shocker would
read the val split from the host, and userfaultfd/bpf/io_uring/perf are the usual exploit primitives.

Prints `ATTACK {"calls": {name: "ok" | errno name, ...}, "machine": ...}` and exits 0 without a
model. Expected: crash; under runc every call denied by seccomp or the dropped capabilities (EPERM,
EACCES, ENOSYS); under gVisor the calls reach the user-space kernel, never the host's.
"""

import ctypes
import errno
import json
import os
import platform
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# Syscall numbers: x86_64 first, aarch64 second (asm-generic).
NR = {
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "open_by_handle_at": (304, 265),
    "add_key": (248, 217),
    "keyctl": (250, 219),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "syslog": (103, 116),
    "acct": (163, 89),
    "reboot": (169, 142),
    "iopl": (172, None),
    "ioperm": (173, None),
    "clock_settime": (227, 112),
    "swapon": (167, 224),
}
column = 0 if platform.machine() in ("x86_64", "AMD64") else 1
calls = {}


def call(name, *args):
    nr = NR[name][column]
    if nr is None:
        calls[name] = "not on this architecture"
        return -1
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *args)
    err = ctypes.get_errno()
    calls[name] = "ok" if ret >= 0 else errno.errorcode.get(err, str(err))
    if ret >= 0 and name in ("perf_event_open", "userfaultfd", "io_uring_setup", "bpf", "finit_module"):
        os.close(ret)  # it was allowed: the fd is the proof, nothing more is done with it
    return ret


garbage = ctypes.create_string_buffer(b"\x7fELF-not-a-module" + b"\0" * 64)
call("init_module", garbage, ctypes.c_ulong(64), ctypes.c_char_p(b""))
fd = os.open("/dev/null", os.O_RDONLY)
call("finit_module", ctypes.c_int(fd), ctypes.c_char_p(b""), ctypes.c_int(0))
os.close(fd)
call("delete_module", ctypes.c_char_p(b"attack_no_such_module"), ctypes.c_uint(os.O_NONBLOCK))
call("kexec_load", ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_void_p(None), ctypes.c_ulong(0))

# shocker: a file_handle for inode 2 (the root of most ext4 file systems), type FILEID_INO32_GEN.
handle = ctypes.create_string_buffer(8 + 8)
ctypes.memmove(handle, (8).to_bytes(4, "little") + (1).to_bytes(4, "little") + (2).to_bytes(8, "little"), 16)
root = os.open("/", os.O_RDONLY)
fd = call("open_by_handle_at", ctypes.c_int(root), handle, ctypes.c_int(os.O_RDONLY))
if fd >= 0:
    calls["open_by_handle_at_listing"] = os.listdir(f"/proc/self/fd/{fd}")[:20]
    os.close(fd)
os.close(root)

call("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"attack"), ctypes.c_char_p(b"x"),
     ctypes.c_size_t(1), ctypes.c_int(-2))  # KEY_SPEC_PROCESS_KEYRING  # fmt: skip
call("keyctl", ctypes.c_int(1), ctypes.c_char_p(b"attack-session"))  # KEYCTL_JOIN_SESSION_KEYRING

# BPF_PROG_LOAD of a socket filter "r0 = 0; exit".
insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)
license_ = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
ctypes.memmove(attr, (1).to_bytes(4, "little") + (2).to_bytes(4, "little"), 8)  # type, insn_cnt
ctypes.memmove(ctypes.byref(attr, 8), ctypes.addressof(insns).to_bytes(8, "little"), 8)
ctypes.memmove(ctypes.byref(attr, 16), ctypes.addressof(license_).to_bytes(8, "little"), 8)
call("bpf", ctypes.c_int(5), attr, ctypes.c_uint(128))  # BPF_PROG_LOAD

# perf_event_open: CPU cycles of every process on CPU 0 (pid -1): the system-wide view.
perf = ctypes.create_string_buffer(128)
ctypes.memmove(perf, (0).to_bytes(4, "little") + (128).to_bytes(4, "little"), 8)  # HARDWARE, size
call("perf_event_open", perf, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1), ctypes.c_ulong(0))

call("userfaultfd", ctypes.c_int(os.O_CLOEXEC | os.O_NONBLOCK))
params = ctypes.create_string_buffer(120)
call("io_uring_setup", ctypes.c_uint(1), params)

log = ctypes.create_string_buffer(4096)
call("syslog", ctypes.c_int(3), log, ctypes.c_int(4096))  # SYSLOG_ACTION_READ_ALL
if calls["syslog"] == "ok":
    calls["syslog_head"] = log.value[:200].decode(errors="replace")
call("acct", ctypes.c_char_p(b"/tmp/attack-acct"))
call("reboot", ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_void_p(None))  # bad magic
call("iopl", ctypes.c_int(3))
call("ioperm", ctypes.c_ulong(0x80), ctypes.c_ulong(1), ctypes.c_int(1))
now = time.clock_gettime_ns(time.CLOCK_REALTIME)
ts = (ctypes.c_long * 2)(now // 10**9, now % 10**9)
call("clock_settime", ctypes.c_int(0), ts)
call("swapon", ctypes.c_char_p(b"/tmp/attack-swap"), ctypes.c_int(0))

print("ATTACK " + json.dumps({"calls": calls, "machine": platform.machine()}), flush=True)
