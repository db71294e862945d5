"""Preflight's probes, run inside a TRAIN-configured container: they observe, the controller judges.

The controller passes this file's source with `python -I -S -c SOURCE MODE ARGS...` (sandbox/preflight/
runner.py), so the image need not hold it and nothing of the image's site-packages is imported. Three
modes, each in its own container:
- `train PARAMS_JSON`: every observation but the two bombs; prints exactly one JSON line, at the end.
- `pids CAP SECONDS`: a bounded fork bomb; prints its progress as it goes (if the whole sandbox dies, as
  gVisor's sentry does, the log still says how far it got), then one JSON line.
- `mem STEP_MIB TOTAL_MIB`: touches memory in steps, printing each total; "survived" if it never died.

Deliberate: standard library only, no project import. Each section of `train` records what it saw; an
exception becomes {"probe_error": ...} so one broken section cannot hide the others. Nothing here
decides whether a property holds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

Params = dict[str, Any]
Obs = dict[str, Any]


def err(e: BaseException) -> str:
    """An OSError's errno name (EROFS, EACCES...), else the exception's type name."""
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def section(obs: Obs, name: str, fn: Callable[[], Any]) -> None:
    try:
        obs[name] = fn()
    except BaseException as e:  # noqa: BLE001 - a failed section is an observation; the others still run
        obs[name] = {"probe_error": type(e).__name__ + ": " + str(e)}


# --------------------------------------------------------------------------- train: the observations


def identity() -> Obs:
    out: Obs = {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "egid": os.getegid(),
        "groups": os.getgroups(),
    }
    try:  # the kernel's own statement of which host uids this user namespace's uids are
        with open("/proc/self/uid_map") as f:
            out["uid_map"] = [[int(x) for x in line.split()] for line in f if line.strip()]
    except (OSError, ValueError) as e:
        out["uid_map"] = "error:" + type(e).__name__
    return out


def status() -> Obs:
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    out: Obs = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = value.strip()
    try:  # gVisor's /proc/self/status has no NoNewPrivs line: ask the kernel directly as well
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        out["prctl_no_new_privs"] = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
    except (ImportError, OSError, AttributeError) as e:
        out["prctl_no_new_privs"] = "error:" + type(e).__name__
    return out


def privilege_attacks() -> Obs:
    out: Obs = {}
    path = "/tmp/.preflight-chown"
    open(path, "w").close()
    try:
        os.chown(path, 0, 0)
        out["chown_to_root"] = "ok"
    except OSError as e:
        out["chown_to_root"] = err(e)
    finally:
        os.unlink(path)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.close()
        out["raw_socket"] = "ok"
    except OSError as e:
        out["raw_socket"] = err(e)
    try:
        os.setuid(0)
        out["setuid_0"] = "ok"
    except OSError as e:
        out["setuid_0"] = err(e)
    return out


def network(p: Params) -> Obs:
    out: Obs = {
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "connect": [],
        "udp": [],
        "dns": {},
    }
    for host, port in p["connect"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(p["connect_timeout"])
        try:
            s.connect((host, port))
            result = "connected"
        except OSError as e:
            result = err(e)
        finally:
            s.close()
        out["connect"].append([host, port, result])
    for host, port in p["udp"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"\0" * 12, (host, port))
            result = "sent"
        except OSError as e:
            result = err(e)
        finally:
            s.close()
        out["udp"].append([host, port, result])
    for name in p["dns"]:
        try:
            out["dns"][name] = sorted({str(a[4][0]) for a in socket.getaddrinfo(name, 443)})
        except OSError as e:
            out["dns"][name] = "error:" + type(e).__name__
    return out


def writes(p: Params) -> Obs:
    out: Obs = {"create": {}, "open": {}}
    for d in p["write_dirs"]:
        path = os.path.join(d, f".preflight-{os.getpid()}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            out["create"][d] = err(e)
            continue
        os.close(fd)
        os.unlink(path)
        out["create"][d] = "ok"
    for path in p["write_files"]:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # opening is the attack; nothing is written
        except OSError as e:
            out["open"][path] = err(e)
            continue
        os.close(fd)
        out["open"][path] = "ok"
    return out


def mounts() -> list[Obs]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            out.append(
                {
                    "mountpoint": fields[4],
                    "options": fields[5].split(","),
                    "fstype": rest[0],
                    "super_options": rest[2].split(",") if len(rest) > 2 else [],
                }
            )
    return out


def fingerprint(path: str, size: int) -> str:
    """The SHA-256 of a file's first `size` bytes (the controller computes the same on the host)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(size))
    return h.hexdigest()


def scan(p: Params) -> Obs:
    """Walk the whole filesystem: files matching a shard by content, socket files, setuid files."""
    want: dict[int, list[tuple[str, str]]] = {}
    for kind in ("val", "train"):
        for size, digest in p["fingerprints"][kind]:
            want.setdefault(size, []).append((kind, digest))
    hits: dict[str, list[str]] = {"val": [], "train": []}
    out: Obs = {"hits": hits, "sockets": [], "setuid": [], "files": 0, "unreadable": 0}
    skip = set(p["skip"])
    t0 = time.monotonic()
    stack = [p["scan_root"]]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            out["unreadable"] += 1
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.path not in skip:
                            stack.append(e.path)
                        continue
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    out["unreadable"] += 1
                    continue
                out["files"] += 1
                if stat.S_ISSOCK(st.st_mode):
                    out["sockets"].append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    if st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                        out["setuid"].append(e.path)
                    matches = want.get(st.st_size)
                    if matches:
                        try:
                            digest = fingerprint(e.path, p["fp_bytes"])
                        except OSError:
                            out["unreadable"] += 1
                            continue
                        for kind, wanted in matches:
                            if digest == wanted:
                                hits[kind].append(e.path)
    out["scan_s"] = round(time.monotonic() - t0, 3)
    try:
        out["data_listing"] = sorted(os.listdir(p["data"]))
    except OSError as e:
        out["data_listing"] = err(e)
    out["val_dir_exists"] = os.path.lexists(p["val_dir"])
    out["engine_sockets"] = {s: os.path.lexists(s) for s in p["engine_sockets"]}
    return out


def environments() -> Obs:
    out: Obs = {"self": dict(os.environ), "procs": {}}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw = f.read()
        except OSError as e:
            out["procs"][pid] = err(e)
            continue
        items = raw.decode("utf-8", "replace").split("\0")
        out["procs"][pid] = dict(i.split("=", 1) for i in items if "=" in i)
    return out


def output_channel(p: Params) -> Obs:
    out_dir, cap = p["out"], p["out_cap"]
    vfs = os.statvfs(out_dir)
    res: Obs = {"fs_bytes": vfs.f_blocks * vfs.f_frsize, "written": 0, "stopped_by": None}
    path = os.path.join(out_dir, ".preflight-fill")
    chunk = b"\xa5" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while res["written"] < cap + p["out_overshoot"]:  # bounded: a missing cap cannot fill the host
            try:
                res["written"] += os.write(fd, chunk)
            except OSError as e:
                res["stopped_by"] = err(e)
                break
    finally:
        os.close(fd)
        os.unlink(path)
    return res


def train_probe(p: Params) -> Obs:
    obs: Obs = {}
    t0 = time.monotonic()
    section(obs, "identity", identity)
    section(obs, "status", status)
    section(obs, "privilege", privilege_attacks)
    section(obs, "network", lambda: network(p))
    section(obs, "writes", lambda: writes(p))
    section(obs, "mounts", mounts)
    section(obs, "scan", lambda: scan(p))
    section(obs, "env", environments)
    section(obs, "output", lambda: output_channel(p))
    obs["elapsed_s"] = round(time.monotonic() - t0, 3)
    return obs


# --------------------------------------------------------------------------- pids: the fork bomb


def fork_bomb(cap: int, seconds: float) -> Obs:
    """Fork until refused, `cap` forks or `seconds`; reap every child; then check a fork works again."""
    children: list[int] = []
    stopped_by, t0 = "cap", time.monotonic()
    try:
        while len(children) < cap:
            if time.monotonic() - t0 > seconds:
                stopped_by = "time"
                break
            try:
                pid = os.fork()
            except OSError as e:
                stopped_by = errno.errorcode.get(e.errno or 0, str(e.errno))
                break
            if pid == 0:
                try:
                    signal.pause()
                finally:
                    os._exit(0)
            children.append(pid)
            if len(children) % 16 == 0:
                print("forked", len(children), flush=True)
    finally:
        elapsed = time.monotonic() - t0
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
    pid = os.fork()  # the container must recover once the bomb is defused
    if pid == 0:
        os._exit(7)
    _, code = os.waitpid(pid, 0)
    pids_max = None
    for path in ("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"):
        try:
            with open(path) as f:
                pids_max = f.read().strip()
            break
        except OSError:
            pass
    return {
        "forked": len(children),
        "stopped_by": stopped_by,
        "elapsed_s": round(elapsed, 3),
        "fork_after": os.waitstatus_to_exitcode(code) == 7,
        "pids_max": pids_max,
    }


# --------------------------------------------------------------------------- mem: the memory hog


def memory_hog(step: int, total: int) -> None:
    held, mib = [], 0
    while mib < total:
        held.append(bytearray(b"\x5a") * (step << 20))  # written, so the pages are really resident
        mib += step
        print(mib, flush=True)
    print("survived", flush=True)


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "train":
        print(json.dumps(train_probe(json.loads(args[0]))), flush=True)
    elif mode == "pids":
        print(json.dumps(fork_bomb(int(args[0]), float(args[1]))), flush=True)
    elif mode == "mem":
        memory_hog(int(args[0]), int(args[1]))
    else:
        print(f"unknown probe mode {mode!r}: expected train, pids or mem", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
