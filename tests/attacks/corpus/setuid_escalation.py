"""Attack: become root through the image's setuid/setgid binaries, file capabilities or set*id calls.

Finds every setuid/setgid file and every file with a `security.capability` attribute in the image,
then runs each one. While it runs, and once it has exited (before it is reaped), the attack reads
the child's credentials from /proc/PID/status: a setuid-root binary that took effect shows euid 0
there, whatever it prints. It also runs the usual paths to root outright (`su` with no password,
`sudo -n`, `newgrp`, `mount` from a user's fstab entry) and calls setuid(0), setresuid, setgid(0),
setgroups and capset directly. If any child ran as root the candidate would have root's view of
the container (the read-only mounts stay read-only, but every file is readable and capabilities
come back); with capabilities it could remount, trace and escape.

Prints `ATTACK {"binaries": {path: {"euids": [...], "egids": [...], "exit": ...}}, "direct": {...},
"no_new_privs": ...}` and exits 0 without a model. Expected: crash; every euid and egid ever seen is
the container's (65532), every direct call EPERM, no_new_privs 1.
"""

import ctypes
import errno
import json
import os
import stat
import time

libc = ctypes.CDLL(None, use_errno=True)
UID, GID = os.getuid(), os.getgid()
WATCH_S = 1.5  # how long one child may run before it is killed
# /bin, /sbin and /lib are links to /usr here; the venv's site-packages (20k files from wheels, which
# cannot carry a setuid bit) would take most of the budget under gVisor, so only its bin/ is searched.
ROOTS = (
    "/usr",
    "/etc",
    "/var",
    "/home",
    "/root",
    "/opt/autoresearch",
    "/opt/venv/bin",
    "/workspace",
    "/data",
)
ARGS = {  # what to ask each binary for; everything else gets --help
    "su": ["root", "-c", "id -u"],
    "sudo": ["-n", "id", "-u"],
    "newgrp": ["root"],
    "mount": ["-t", "tmpfs", "none", "/tmp"],
    "umount": ["/out"],
    "passwd": ["-S", "root"],
    "chage": ["-l", "root"],
    "gpasswd": ["-a", "nobody", "root"],
    "chsh": ["-s", "/bin/sh", "root"],
    "chfn": ["-f", "x", "root"],
    "unix_chkpwd": ["root", "chkexpiry"],
}


def errname(err):
    return errno.errorcode.get(err, str(err))


def privileged_files():
    found = {}
    for root in ROOTS:
        for folder, _, files in os.walk(root, onerror=lambda e: None):
            for name in files:
                path = os.path.realpath(os.path.join(folder, name))  # /bin is /usr/bin: once each
                if path in found:
                    continue
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                kinds = []
                if st.st_mode & stat.S_ISUID:
                    kinds.append(f"setuid:{st.st_uid}")
                if st.st_mode & stat.S_ISGID:
                    kinds.append(f"setgid:{st.st_gid}")
                try:
                    os.getxattr(path, "security.capability", follow_symlinks=False)
                    kinds.append("file-capabilities")
                except OSError:
                    pass
                if kinds:
                    found[path] = kinds
    return found


def creds(pid):
    """(euid, egid) of a running or zombie child, from /proc/PID/status."""
    euid = egid = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    euid = int(line.split()[2])
                elif line.startswith("Gid:"):
                    egid = int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return euid, egid


def run_watched(argv):
    """Run argv with a silent stdin; sample its credentials until it exits, then once more as a zombie."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(r_in, 0)
        os.dup2(w_out, 1)
        os.dup2(w_out, 2)
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(r_in)
    os.close(w_out)
    os.set_blocking(r_out, False)
    euids, egids, output, deadline = set(), set(), b"", time.monotonic() + WATCH_S
    exited = None
    while time.monotonic() < deadline:
        euid, egid = creds(pid)
        if euid is not None:
            euids.add(euid)
            egids.add(egid)
        try:
            output += os.read(r_out, 4096)
        except BlockingIOError:
            pass
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            exited = info.si_status
            euid, egid = creds(pid)  # the zombie still carries its final credentials
            if euid is not None:
                euids.add(euid)
                egids.add(egid)
            break
        time.sleep(0.002)
    if exited is None:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(w_in)
    try:
        output += os.read(r_out, 4096)
    except (BlockingIOError, OSError):
        pass
    os.close(r_out)
    return {"euids": sorted(euids), "egids": sorted(egids), "exit": exited if exited is not None else "killed",
            "output": output.decode(errors="replace")[:160]}  # fmt: skip


def direct_calls():
    out = {}
    for name, fn in (("setuid_0", lambda: os.setuid(0)), ("seteuid_0", lambda: os.seteuid(0)),
                     ("setresuid_0", lambda: os.setresuid(0, 0, 0)), ("setgid_0", lambda: os.setgid(0)),
                     ("setresgid_0", lambda: os.setresgid(0, 0, 0)), ("setgroups_0", lambda: os.setgroups([0])),
                     ("chown_to_root", lambda: os.chown(tmp, 0, 0))):  # fmt: skip
        try:
            fn()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errname(exc.errno)
    # capset: ask for every capability in the permitted and effective sets.
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)(0xFFFFFFFF, 0xFFFFFFFF, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    ctypes.set_errno(0)
    out["capset_all"] = "ok" if libc.capset(header, data) == 0 else errname(ctypes.get_errno())
    out["uid_after"], out["euid_after"] = os.getuid(), os.geteuid()
    return out


tmp = "/tmp/attack-setuid"  # a file of ours that, owned by root and setuid, would be a root shell
with open(tmp, "w") as f:
    f.write("#!/bin/sh\nid -u\n")
files = privileged_files()
binaries = {}
for path in sorted(files):
    args = ARGS.get(os.path.basename(path), ["--help"])
    binaries[path] = {"kinds": files[path]} | run_watched([path, *args])
control = run_watched(["/usr/bin/id", "-u"])  # an ordinary binary: the sampling sees our own uid
report = {"uid": UID, "gid": GID, "binaries": binaries, "control": control, "direct": direct_calls(),
          "no_new_privs": libc.prctl(39, 0, 0, 0, 0)}  # fmt: skip  # PR_GET_NO_NEW_PRIVS
print("ATTACK " + json.dumps(report), flush=True)
