"""The containers' trusted launcher: narrow the kernel's reach with a seccomp filter, then exec.

`python /opt/autoresearch/sandbox/incontainer/jail.py PROGRAM ARGS...` installs a second seccomp filter on top of
the engine's, then replaces itself with PROGRAM; the filter is inherited by every process the program
starts and can never be removed (no-new-privileges is set, so the candidate cannot exec its way out).

Why a second filter, not a profile passed to the engine: the red-team suite found two holes that the
engine's defaults leave open on this project's supported engines.
- Docker before 25 allows io_uring in its default profile, so under runc the host kernel's io_uring,
  a frequent source of privilege escalations, was reachable from TRAIN.
- gVisor applies the engine's seccomp profile only with `--oci-seccomp`; without it a candidate could
  create user, mount and cgroup namespaces (and become root inside them).
A filter the sandbox installs itself holds under every runtime and engine version, needs no profile
file to ship or keep in step with the engine, and only ever removes calls: the engine's filter still
applies underneath. Filters stack, and the kernel runs every one; the strictest answer wins.

Denied (EPERM): io_uring, ptrace and process_vm_{readv,writev} (another process's memory), new
namespaces (unshare, setns, and clone with any CLONE_NEW* flag), the mount API, kernel modules and
kexec, bpf, perf_event_open, userfaultfd and the kernel keyring; clone3 answers ENOSYS so that libc
falls back to clone, whose flags a classic BPF filter can inspect. Any call made through another ABI
(32-bit int 0x80, x32) is denied outright. None of these is needed to train or to evaluate a model.

Standard library only, and it never imports the candidate's code: it runs by path with -I and -S.
Supported: x86_64 and aarch64. Elsewhere it refuses to start (fail closed) and says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

# --------------------------------------------------------------------------- constants (linux/seccomp.h, filter.h)

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET = 0x06  # BPF_RET | BPF_K
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16  # struct seccomp_data, little-endian
X32_SYSCALL_BIT = 0x40000000
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

DENIED_NAMES = (
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "open_by_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
)  # fmt: skip

# (audit arch, syscall numbers by name) per machine; numbers from the kernel's syscall tables.
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
            "unshare": 272, "setns": 308, "clone": 56, "clone3": 435,
            "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
            "open_by_handle_at": 304,
            "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246,
            "kexec_file_load": 320,
            "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
            "request_key": 249,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
            "unshare": 97, "setns": 268, "clone": 220, "clone3": 435,
            "mount": 40, "umount2": 39, "pivot_root": 41, "open_tree": 428, "move_mount": 429,
            "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
            "open_by_handle_at": 265,
            "init_module": 105, "finit_module": 273, "delete_module": 106, "kexec_load": 104,
            "kexec_file_load": 294,
            "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219, "add_key": 217,
            "request_key": 218,
        },
    ),
}  # fmt: skip
ARCHES["arm64"] = ARCHES["aarch64"]

Insn = tuple[int, int, int, int]  # (code, jump if true, jump if false, k)
Step = tuple[int, int, str | None, str | None]  # (code, k, where to go if true, if false); None: next
RETURNS = {"ALLOW": RET_ALLOW, "EPERM": RET_ERRNO | errno.EPERM, "ENOSYS": RET_ERRNO | errno.ENOSYS}


def program(machine: str) -> list[Insn]:
    """The classic-BPF filter for `machine` (raises KeyError for an unsupported one)."""
    audit_arch, nr = ARCHES[machine]
    steps: list[Step] = [
        (LD_W_ABS, OFFSET_ARCH, None, None),
        (JEQ, audit_arch, None, "EPERM"),  # another ABI (int 0x80, ...): denied outright
        (LD_W_ABS, OFFSET_NR, None, None),
    ]
    if machine == "x86_64":
        steps.append((JGE, X32_SYSCALL_BIT, "EPERM", None))  # the x32 ABI
    steps += [(JEQ, nr[name], "EPERM", None) for name in DENIED_NAMES]
    steps += [
        (JEQ, nr["clone3"], "ENOSYS", None),  # its flags sit in memory, out of BPF's reach
        (JEQ, nr["clone"], None, "ALLOW"),
        (LD_W_ABS, OFFSET_ARG0_LOW, None, None),
        (JSET, CLONE_NEW_FLAGS, "EPERM", "ALLOW"),
    ]
    at = {label: len(steps) + i for i, label in enumerate(RETURNS)}

    def jump(i: int, label: str | None) -> int:
        return 0 if label is None else at[label] - i - 1

    insns = [(code, jump(i, t), jump(i, f), k) for i, (code, k, t, f) in enumerate(steps)]
    insns += [(RET, 0, 0, value) for value in RETURNS.values()]
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in insns), "a jump does not fit in a byte"
    return insns


def install(machine: str | None = None) -> None:
    """Install the filter on this process (and everything it will start). Raises OSError on failure."""
    insns = program(machine or platform.machine())
    raw = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = SockFprog(len(insns), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: jail.py PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    machine = platform.machine()
    if machine not in ARCHES:
        print(
            f"sandbox jail: no syscall table for {machine!r}; refusing to start unfiltered", file=sys.stderr
        )
        return 126
    try:
        install(machine)
    except OSError as exc:
        print(f"sandbox jail: cannot install the seccomp filter: {exc}", file=sys.stderr)
        return 126
    os.execvp(argv[0], argv)  # never returns


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
