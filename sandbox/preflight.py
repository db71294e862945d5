"""The isolation self-test: `python -m harness preflight` attacks a TRAIN container from inside.

A sandbox that was configured right once can be opened by an engine upgrade, a changed daemon.json,
a different runtime or an edit to the container config. So instead of reading the configuration back,
preflight starts probe containers built by the production code path (DockerSandbox's TRAIN config:
same limits, same environment, same mounts: candidate, train/ and tokenizer/ read-only, the capped
tmpfs output volume) and tries each escape for real: connecting out and to the host, writing the
image, reading validation data, finding secrets and the engine's socket, fork-bombing, exhausting
memory, overflowing the output channel. Each property is then decided by the controller from the
concrete facts the probe reports (errno names, byte counts, capability masks), never from a "PASS"
string the probe could print.

Deliberate choices:
- The probe is a small trusted stdlib-only snippet run with `python -I -S -c`; it prints one JSON
  line of observations. Anything it could not observe is a failure, not a pass.
- Where a check could pass vacuously, it carries a positive control: a listener on the host proves the
  host path would connect (and counts what arrives during the probe), the filesystem search must find
  the mounted train shard before its silence about val shards means anything, the writable mounts
  must accept the same write the read-only ones refuse, the fork bomb must stop close to pids_limit.
- Three containers run side by side: the TRAIN probe (everything but the two bombs), a fork bomb with
  the production flags (alone, so that whatever it does cannot hide the other facts: gVisor's sentry
  dies as a whole when the bomb reaches the pids limit), and a memory hog with the production flags
  but a small memory limit, so it is OOM-killed in a second instead of after filling gigabytes; the
  TRAIN limit itself is checked in the engine's inspected HostConfig ("hardening_flags").
- Facts are chosen to hold under both runc and gVisor: e.g. read-only is proven by an EROFS on a
  world-writable directory of the image (/var/tmp), since gVisor checks permissions before the mount
  flag; no_new_privs is read with prctl, since gVisor's /proc/self/status omits the line.
- A canary API key is put into the controller's environment for the duration of the check; it and
  every secret-looking variable of the controller must be absent from every environment readable
  inside the container and from the engine's record of the container.
- Every probe container and volume carries the sandbox's labels (role "probe") and is removed in
  `finally`; a killed preflight is cleaned up by the reaper like any trial.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

from sandbox import constants as C
from sandbox import reaper, trialdir
from sandbox.docker_backend import OUTPUT_MAX_INODES, RUNNING, DockerTrial, connect, resolve_image
from sandbox.limits import Limits, MiB
from sandbox.retry import engine_errors, infra_retry
from sandbox.verdict import DataMissing, EngineUnavailable, ImageMissing, SandboxError, TrialSpec

logger = logging.getLogger(__name__)

PROBE_ROLE = "probe"
PROBE_TIMEOUT_S = 120.0  # a probe still running after this is killed and every check it owed fails
MEM_PROBE_MB = 256  # the memory probe's limit: small, so exceeding it takes a fraction of a second
MEM_PROBE_ALLOC_FACTOR = 4  # it tries to allocate this many times its limit ...
MEM_PROBE_STEP_MB = 16  # ... in steps of this size
FORK_BOMB_S = 20.0  # the fork bomb gives up after this long (a limit it never hits is a failure) ...
FORK_BOMB_OVERSHOOT = 64  # ... or after this many forks past pids_limit
FINGERPRINT_BYTES = 1 * MiB  # files are matched by size, then by the SHA-256 of their first MiB
CONNECT_TIMEOUT_S = 2.0
EXTERNAL_TARGETS: tuple[tuple[str, int], ...] = (("1.1.1.1", 443), ("8.8.8.8", 53))
DNS_NAMES = ("example.com", "pypi.org")
CANARY_NAME = "ANTHROPIC_API_KEY"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
)
OUTPUT_FULL_ERRNOS = frozenset({"ENOSPC", "EFBIG", "EDQUOT"})
WRITABLE_DIRS = ("/tmp", C.CONTAINER_OUT, "/dev/shm")  # TRAIN may write here: the probe's write must work
# On the image's root filesystem. /var/tmp is world-writable in the image, so only a read-only mount can
# refuse it: runc's kernel says EROFS before checking permissions, gVisor checks permissions first.
ROOTFS_DIRS = ("/", "/usr", "/etc", "/var/tmp", "/home", "/root", C.CONTAINER_APP, C.CONTAINER_WORKDIR)
READ_ONLY_MOUNTS = (
    f"{C.CONTAINER_DATA}/{C.TRAIN_DIRNAME}",
    f"{C.CONTAINER_DATA}/{C.TOKENIZER_DIRNAME}",
    C.CONTAINER_CANDIDATE,
)
READ_ONLY_DIRS = ROOTFS_DIRS + READ_ONLY_MOUNTS[:2]
READ_ONLY_FILES = (f"{C.CONTAINER_APP}/prepare.py", C.CONTAINER_CANDIDATE)

# Exit codes of `main` (the infrastructure ones match harness/sandbox_cmds.py).
EXIT_OK = 0
EXIT_PROPERTY_FAILED = 1
EXIT_SANDBOX = 7
EXIT_ENGINE = 3
EXIT_IMAGE = 4
EXIT_DATA = 5


class RuntimeUnavailable(SandboxError):
    """The requested container runtime (e.g. runsc) is not registered with the engine."""


class HardeningTier(StrEnum):
    """How the container is separated from the host kernel, strongest first."""

    RUNSC = "runsc"  # gVisor: the candidate's syscalls hit a user-space kernel
    USERNS_REMAP = "userns-remap"  # runc, but container uids map to unprivileged host uids
    RUNC = "runc"  # runc with namespaces, cgroups, seccomp, no capabilities


class Check(BaseModel):
    """One property: whether it held, why, and the concrete facts the decision was made from."""

    model_config = ConfigDict(frozen=True)

    name: str
    passed: bool
    detail: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class PreflightResult(BaseModel):
    """Everything preflight found. `passed` only when every property held."""

    model_config = ConfigDict(frozen=True)

    checks: tuple[Check, ...]
    tier: HardeningTier
    runtime: str  # the runtime the engine actually used for the probe (HostConfig.Runtime)
    default_runtime: str
    runtimes: tuple[str, ...]
    userns_remap: bool
    # /proc/self/uid_map seen inside the TRAIN probe: (first uid inside, first uid on the host, count)
    uid_map: tuple[tuple[int, int, int], ...] = ()
    engine_version: str
    cgroup_version: str
    image: str
    image_id: str
    profile: str
    wall_s: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def check(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)


# --------------------------------------------------------------------------- the probes (run inside)

# Trusted, stdlib only. Each section records what it saw; an exception becomes {"probe_error": ...} so
# one broken section cannot hide the others. It prints exactly one line, at the very end.
PROBE = r"""
import errno, hashlib, json, os, socket, stat, sys, time

P = json.loads(sys.argv[1])
OBS = {}

def err(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__

def section(name, fn):
    try:
        OBS[name] = fn()
    except BaseException as e:
        OBS[name] = {"probe_error": type(e).__name__ + ": " + str(e)}

def identity():
    out = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
           "groups": os.getgroups()}
    try:  # the kernel's own statement of which host uids this user namespace's uids are
        with open("/proc/self/uid_map") as f:
            out["uid_map"] = [[int(x) for x in line.split()] for line in f if line.strip()]
    except (OSError, ValueError) as e:
        out["uid_map"] = "error:" + type(e).__name__
    return out

def status():
    keys = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    out = {}
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

def privilege_attacks():
    out = {}
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

def network():
    out = {"interfaces": sorted(name for _, name in socket.if_nameindex()), "connect": [], "udp": [], "dns": {}}
    for host, port in P["connect"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(P["connect_timeout"])
        try:
            s.connect((host, port))
            result = "connected"
        except OSError as e:
            result = err(e)
        finally:
            s.close()
        out["connect"].append([host, port, result])
    for host, port in P["udp"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"\0" * 12, (host, port))
            result = "sent"
        except OSError as e:
            result = err(e)
        finally:
            s.close()
        out["udp"].append([host, port, result])
    for name in P["dns"]:
        try:
            out["dns"][name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})
        except OSError as e:
            out["dns"][name] = "error:" + type(e).__name__
    return out

def writes():
    out = {"create": {}, "open": {}}
    for d in P["write_dirs"]:
        path = os.path.join(d, ".preflight-%d" % os.getpid())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            out["create"][d] = err(e)
            continue
        os.close(fd)
        os.unlink(path)
        out["create"][d] = "ok"
    for path in P["write_files"]:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # opening is the attack; nothing is written
        except OSError as e:
            out["open"][path] = err(e)
            continue
        os.close(fd)
        out["open"][path] = "ok"
    return out

def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, rest = head.split(), tail.split()
            out.append({"mountpoint": fields[4], "options": fields[5].split(","), "fstype": rest[0],
                        "super_options": rest[2].split(",") if len(rest) > 2 else []})
    return out

def fingerprint(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(P["fp_bytes"]))
    return h.hexdigest()

def scan():
    want = {}
    for kind in ("val", "train"):
        for size, digest in P["fingerprints"][kind]:
            want.setdefault(size, []).append((kind, digest))
    hits = {"val": [], "train": []}
    out = {"hits": hits, "sockets": [], "setuid": [], "files": 0, "unreadable": 0}
    skip = set(P["skip"])
    t0 = time.monotonic()
    stack = [P["scan_root"]]
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
                            digest = fingerprint(e.path)
                        except OSError:
                            out["unreadable"] += 1
                            continue
                        for kind, wanted in matches:
                            if digest == wanted:
                                hits[kind].append(e.path)
    out["scan_s"] = round(time.monotonic() - t0, 3)
    try:
        out["data_listing"] = sorted(os.listdir(P["data"]))
    except OSError as e:
        out["data_listing"] = err(e)
    out["val_dir_exists"] = os.path.lexists(P["val_dir"])
    out["engine_sockets"] = {p: os.path.lexists(p) for p in P["engine_sockets"]}
    return out

def environments():
    out = {"self": dict(os.environ), "procs": {}}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                raw = f.read()
        except OSError as e:
            out["procs"][pid] = err(e)
            continue
        items = raw.decode("utf-8", "replace").split("\0")
        out["procs"][pid] = dict(i.split("=", 1) for i in items if "=" in i)
    return out

def output_channel():
    out_dir, cap = P["out"], P["out_cap"]
    vfs = os.statvfs(out_dir)
    res = {"fs_bytes": vfs.f_blocks * vfs.f_frsize, "written": 0, "stopped_by": None}
    path = os.path.join(out_dir, ".preflight-fill")
    chunk = b"\xa5" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while res["written"] < cap + P["out_overshoot"]:  # bounded: a missing cap cannot fill the host
            try:
                res["written"] += os.write(fd, chunk)
            except OSError as e:
                res["stopped_by"] = err(e)
                break
    finally:
        os.close(fd)
        os.unlink(path)
    return res

t0 = time.monotonic()
section("identity", identity)
section("status", status)
section("privilege", privilege_attacks)
section("network", network)
section("writes", writes)
section("mounts", mounts)
section("scan", scan)
section("env", environments)
section("output", output_channel)
OBS["elapsed_s"] = round(time.monotonic() - t0, 3)
print(json.dumps(OBS), flush=True)
"""

# A bounded fork bomb, alone in its container so that whatever it does cannot hide the other facts. It
# prints its progress as it goes: if the whole sandbox dies (gVisor's sentry does, see check_pids_limit),
# the log still says how far it got.
PIDS_PROBE = r"""
import errno, json, os, signal, sys, time
cap, seconds = int(sys.argv[1]), float(sys.argv[2])
children, stopped_by, t0 = [], "cap", time.monotonic()
try:
    while len(children) < cap:
        if time.monotonic() - t0 > seconds:
            stopped_by = "time"
            break
        try:
            pid = os.fork()
        except OSError as e:
            stopped_by = errno.errorcode.get(e.errno, str(e.errno))
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
print(json.dumps({"forked": len(children), "stopped_by": stopped_by, "elapsed_s": round(elapsed, 3),
                  "fork_after": os.waitstatus_to_exitcode(code) == 7, "pids_max": pids_max}), flush=True)
"""

MEM_PROBE = r"""
import sys
step, total = int(sys.argv[1]), int(sys.argv[2])
held, mib = [], 0
while mib < total:
    held.append(bytearray(b"\x5a") * (step << 20))  # written, so the pages are really resident
    mib += step
    print(mib, flush=True)
print("survived", flush=True)
"""


# --------------------------------------------------------------------------- host side helpers


def fingerprint(path: Path) -> str:
    """The SHA-256 of a file's first FINGERPRINT_BYTES (the probe computes the same)."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(FINGERPRINT_BYTES)).hexdigest()


def _fingerprints(folder: Path, limit: int | None = None) -> list[tuple[int, str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return [(p.stat().st_size, fingerprint(p)) for p in files[:limit]]


class _HostListener:
    """A TCP listener on 0.0.0.0 of the host, so that an open path from the container would connect.

    `arm` connects to it from the host on each address and keeps the addresses where that worked: a
    check against an address the listener cannot be reached on would prove nothing.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("0.0.0.0", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="preflight-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            with self._lock:
                self._peers.append(peer[0])

    def accepted(self) -> list[str]:
        with self._lock:
            return list(self._peers)

    def arm(self, addresses: list[str]) -> list[str]:
        armed = []
        for address in addresses:
            before = len(self.accepted())
            try:
                with socket.create_connection((address, self.port), timeout=CONNECT_TIMEOUT_S):
                    pass
            except OSError as exc:
                logger.info("host address %s: the listener is not reachable from the host (%s)", address, exc)
                continue
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while len(self.accepted()) == before and time.monotonic() < deadline:
                time.sleep(0.01)
            if len(self.accepted()) > before:
                armed.append(address)
        with self._lock:
            self._peers.clear()
        return armed

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


def _host_addresses(client: docker.DockerClient) -> list[str]:
    """IPv4 addresses of the host a container could aim at: every interface's, and the engine's gateways."""
    addresses = _interface_addresses()
    try:
        networks = client.api.networks()
    except docker.errors.APIError as exc:
        logger.warning("could not list the engine's networks: %s", exc)
        networks = []
    for network in networks:
        for config in (network.get("IPAM") or {}).get("Config") or []:
            gateway = config.get("Gateway") or ""
            if not gateway and config.get("Subnet"):
                # Docker leaves Gateway out of the default bridge's IPAM; it is the subnet's first address.
                subnet = ipaddress.ip_network(config["Subnet"], strict=False)
                gateway = str(next(subnet.hosts())) if subnet.version == 4 else ""
            if gateway and ":" not in gateway:
                addresses.append(gateway)
    return list(dict.fromkeys(a for a in addresses if not ipaddress.ip_address(a).is_loopback))


def _interface_addresses() -> list[str]:
    """The primary IPv4 address of each of the host's interfaces (SIOCGIFADDR), loopback included."""
    siocgifaddr = 0x8915
    addresses = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            addresses.append(socket.inet_ntoa(packed[20:24]))
    return addresses


@contextlib.contextmanager
def _canary_in_environment() -> Iterator[str]:
    """Put a fake API key into the controller's environment for the duration of the check."""
    value = f"sk-ant-preflight-canary-{secrets.token_hex(16)}"
    previous = os.environ.get(CANARY_NAME)
    os.environ[CANARY_NAME] = value
    try:
        yield value
    finally:
        if previous is None:
            os.environ.pop(CANARY_NAME, None)
        else:
            os.environ[CANARY_NAME] = previous


def _controller_secrets() -> dict[str, str]:
    """The controller's secret-looking variables (name -> value) that a leak would carry."""
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _parse_last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


# --------------------------------------------------------------------------- running the probes


class _Observed(BaseModel):
    """What the controller saw: the probes' reports, the engine's records, the host-side controls."""

    model_config = ConfigDict(frozen=True)

    probe: dict[str, Any]  # the TRAIN probe's observations ({} if it printed none)
    probe_attrs: dict[str, Any]  # the engine's inspect of the TRAIN probe
    probe_log_tail: str
    pids_attrs: dict[str, Any]  # the fork bomb's container
    pids_log: str
    mem_attrs: dict[str, Any]
    mem_log: str
    timed_out: tuple[str, ...]
    armed: tuple[str, ...]  # host addresses where the listener was reachable from the host
    listener_port: int
    accepted: tuple[str, ...]  # peers the listener accepted while the probe ran
    controller_secrets: dict[str, str]
    val_fingerprints: tuple[tuple[int, str], ...]
    train_fingerprints: tuple[tuple[int, str], ...]
    data_dir: str
    host_spawn_ok: bool


def run_preflight(
    client: docker.DockerClient,
    limits: Limits,
    data_dir: Path | None,
    *,
    profile: str = "tiny",
    image: str = C.TRAINER_IMAGE,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> PreflightResult:
    """Attack a TRAIN container built with `limits` from inside and judge every property.

    Raises `SandboxError` (EngineUnavailable, ImageMissing, DataMissing, RuntimeUnavailable) when the
    check itself cannot run; a property that does not hold is a failed `Check`, not an exception.
    """
    started = time.monotonic()
    with engine_errors("reading the engine's configuration"):
        info: dict[str, Any] = infra_retry(client.info)()
    runtimes = tuple(sorted(info.get("Runtimes") or {}))
    if limits.runtime is not None and limits.runtime not in runtimes:
        raise RuntimeUnavailable(
            f"runtime {limits.runtime!r} is not registered with the engine (it has {', '.join(runtimes)}); "
            "run `make engine` (sandbox/scripts/ensure-engine.sh registers runsc)"
        )
    image_id = resolve_image(client, image)
    data = trialdir.resolve_data_dir(data_dir, profile)
    val_fps = tuple(_fingerprints(data / C.VAL_DIRNAME))
    train_fps = tuple(_fingerprints(data / C.TRAIN_DIRNAME, limit=2))

    listener = _HostListener()
    try:
        armed = tuple(listener.arm(_host_addresses(client)))
        logger.info("host listener on port %d reachable at %s", listener.port, ", ".join(armed) or "nothing")
        with tempfile.TemporaryDirectory(prefix="preflight-") as tmp, _canary_in_environment():
            controller_secrets = _controller_secrets()
            params = _probe_params(limits, armed, listener.port, val_fps, train_fps)
            runs = _run_probes(client, image_id, limits, data, profile, Path(tmp), params, timeout_s)
        accepted = tuple(listener.accepted())
    finally:
        listener.close()

    observed = _Observed(
        **runs,
        armed=armed,
        listener_port=listener.port,
        accepted=accepted,
        controller_secrets=controller_secrets,
        val_fingerprints=val_fps,
        train_fingerprints=train_fps,
        data_dir=str(data),
        host_spawn_ok=_host_can_spawn(),
    )
    checks = judge_all(observed, limits)
    host_config = observed.probe_attrs.get("HostConfig") or {}
    runtime = str(host_config.get("Runtime") or info.get("DefaultRuntime") or "runc")
    uid_map = _uid_map(observed.probe)
    userns = userns_remapped(info, host_config, uid_map)
    if runtime == "runsc":
        tier = HardeningTier.RUNSC
    elif userns:
        tier = HardeningTier.USERNS_REMAP
    else:
        tier = HardeningTier.RUNC
    result = PreflightResult(
        checks=checks,
        tier=tier,
        runtime=runtime,
        default_runtime=str(info.get("DefaultRuntime") or ""),
        runtimes=runtimes,
        userns_remap=userns,
        uid_map=uid_map,
        engine_version=str(info.get("ServerVersion") or ""),
        cgroup_version=str(info.get("CgroupVersion") or ""),
        image=image,
        image_id=image_id,
        profile=profile,
        wall_s=round(time.monotonic() - started, 2),
    )
    for check in checks:
        (logger.info if check.passed else logger.error)("%s: %s", check.name, check.detail)
    return result


def _uid_map(probe: dict[str, Any]) -> tuple[tuple[int, int, int], ...]:
    """The TRAIN probe's /proc/self/uid_map as (inside, host, count) rows; () when it could not read it."""
    raw = (probe.get("identity") or {}).get("uid_map") if isinstance(probe.get("identity"), dict) else None
    if not isinstance(raw, list):
        return ()
    try:
        return tuple((int(a), int(b), int(n)) for a, b, n in raw)
    except (TypeError, ValueError):
        return ()


def userns_remapped(
    info: dict[str, Any], host_config: dict[str, Any], uid_map: tuple[tuple[int, int, int], ...]
) -> bool:
    """The TRAIN container really ran in a remapped user namespace: the engine says so ("name=userns" in
    SecurityOptions, and the container did not opt out with UsernsMode "host") AND the kernel agrees:
    the container's uid_map sends its uid 0 to a host uid other than 0. The engine's word alone is a
    claim; the identity map "0 0 4294967295" means no remapping whatever the engine says.
    """
    claimed = any("name=userns" in opt for opt in info.get("SecurityOptions") or [])
    claimed = claimed and host_config.get("UsernsMode") != "host"
    root_on_host = [host for inside, host, count in uid_map if inside == 0 and count > 0]
    observed = bool(root_on_host) and root_on_host[0] != 0
    if claimed != observed:
        logger.warning("userns-remap: the engine says %s, the container's uid_map is %s", claimed, uid_map)
    return claimed and observed


def _probe_params(
    limits: Limits,
    armed: tuple[str, ...],
    port: int,
    val_fps: tuple[tuple[int, str], ...],
    train_fps: tuple[tuple[int, str], ...],
) -> dict[str, Any]:
    """The TRAIN probe's instructions (passed as one JSON argument)."""
    return {
        "connect": [[a, port] for a in armed] + [list(t) for t in EXTERNAL_TARGETS],
        "udp": [[a, 53] for a in armed] + [[host, 53] for host, _ in EXTERNAL_TARGETS],
        "connect_timeout": CONNECT_TIMEOUT_S,
        "dns": list(DNS_NAMES),
        "write_dirs": list(READ_ONLY_DIRS + WRITABLE_DIRS),
        "write_files": list(READ_ONLY_FILES),
        "fingerprints": {"val": [list(f) for f in val_fps], "train": [list(f) for f in train_fps]},
        "fp_bytes": FINGERPRINT_BYTES,
        "scan_root": "/",
        "skip": ["/proc", "/sys", "/dev"],
        "data": C.CONTAINER_DATA,
        "val_dir": f"{C.CONTAINER_DATA}/{C.VAL_DIRNAME}",
        "engine_sockets": list(ENGINE_SOCKETS),
        "out": C.CONTAINER_OUT,
        "out_cap": limits.output_limit_mb * MiB,
        "out_overshoot": 64 * MiB,
    }


def _run_probes(
    client: docker.DockerClient,
    image_id: str,
    limits: Limits,
    data_dir: Path,
    profile: str,
    tmp: Path,
    params: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    """Run the TRAIN probe, the fork bomb and the memory hog side by side; always remove what was created.

    The TRAIN probe is built by DockerSandbox's own code (its output volume and TRAIN config), so
    preflight attacks the configuration trials really get, not a copy of it that could drift.
    """
    placeholder = tmp / "candidate.py"
    placeholder.write_text("# preflight: the probe runs with python -c; this file is only mounted\n")
    spec = TrialSpec(
        trial_id=f"preflight-{secrets.token_hex(3)}",
        candidate=placeholder,
        trial_dir=tmp / "trial",
        profile=profile,
        limits=limits,
    )
    trial = DockerTrial(
        client=client,
        image_id=image_id,
        spec=spec,
        trial_dir=spec.trial_dir,
        data_dir=data_dir,
        candidate=trialdir.stage_candidate(placeholder, spec.trial_dir),
    )
    mem_args = [str(MEM_PROBE_STEP_MB), str(MEM_PROBE_MB * MEM_PROBE_ALLOC_FACTOR)]
    pids_args = [str(limits.pids_limit + FORK_BOMB_OVERSHOOT), str(FORK_BOMB_S)]
    try:
        with engine_errors("creating the probe containers"):
            out = trial.volume("out", limits.output_limit_mb, OUTPUT_MAX_INODES)
            config = trial.train_config(out)
            config["command"] = ["python", "-I", "-S", "-c", PROBE, json.dumps(params)]
            probe = _create(trial, "probe", config)
            mem_config = limits.common_docker_kwargs(mem_limit_mb=MEM_PROBE_MB)
            mem_config["command"] = ["python", "-I", "-S", "-c", MEM_PROBE, *mem_args]
            mem = _create(trial, "probe-mem", mem_config)
            pids_config = limits.common_docker_kwargs(mem_limit_mb=limits.mem_limit_mb)
            pids_config["command"] = ["python", "-I", "-S", "-c", PIDS_PROBE, *pids_args]
            pids = _create(trial, "probe-pids", pids_config)
        with engine_errors("running the probes"):
            for container in (probe, pids, mem):
                container.start()
            timed_out = _wait_all((probe, pids, mem), timeout_s)
            probe_log = _text(infra_retry(probe.logs)(stdout=True, stderr=True))
            probe_out = _text(infra_retry(probe.logs)(stdout=True, stderr=False))
            pids_log = _text(infra_retry(pids.logs)(stdout=True, stderr=True))
            mem_log = _text(infra_retry(mem.logs)(stdout=True, stderr=True))
        return {
            "probe": _parse_last_json(probe_out) or {},
            "probe_attrs": probe.attrs,
            "probe_log_tail": probe_log[-2000:],
            "pids_attrs": pids.attrs,
            "pids_log": pids_log[-4000:],
            "mem_attrs": mem.attrs,
            "mem_log": mem_log[-4000:],
            "timed_out": tuple(c.name for c in timed_out),
        }
    finally:
        trial.cleanup()


def _create(trial: DockerTrial, name: str, config: dict[str, Any]) -> Container:
    """A container of the trial (removed by its cleanup) labelled with the probe role."""
    container: Container = infra_retry(trial.client.containers.create)(
        image=trial.image_id,
        name=trial.container_name(name),
        labels=reaper.sandbox_labels(trial.spec.trial_id, PROBE_ROLE),
        **config,
    )
    trial.containers.append(container)
    return container


def _wait_all(containers: tuple[Container, ...], timeout_s: float) -> list[Container]:
    """Poll until every container exited; kill those still running at the deadline and return them."""
    deadline = time.monotonic() + timeout_s
    pending = list(containers)
    while pending and time.monotonic() < deadline:
        for container in list(pending):
            infra_retry(container.reload)()
            if container.status not in RUNNING:
                pending.remove(container)
        if pending:
            time.sleep(0.1)
    for container in pending:
        logger.error("probe %s still running after %.0f s: killing it", container.name, timeout_s)
        with contextlib.suppress(docker.errors.APIError):
            container.kill()
        container.reload()
    return pending


def _host_can_spawn() -> bool:
    """The host itself can still start a process after the fork bomb (its pids are not exhausted)."""
    import subprocess

    try:
        return subprocess.run([sys.executable, "-c", "pass"], timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --------------------------------------------------------------------------- judging the facts


def _section(obs: _Observed, name: str) -> tuple[dict[str, Any] | None, str]:
    """One section of the probe's report, or None and why it is missing."""
    if not obs.probe:
        why = "the probe printed no report"
        if obs.timed_out:
            why += f" (killed after {PROBE_TIMEOUT_S:.0f} s)"
        return None, f"{why}; log tail: {obs.probe_log_tail[-300:]!r}"
    value = obs.probe.get(name)
    if not isinstance(value, dict):
        return None, f"the probe's report has no {name!r} section"
    if "probe_error" in value:
        return None, f"the probe could not observe {name}: {value['probe_error']}"
    return value, ""


def _failed(name: str, why: str) -> Check:
    return Check(name=name, passed=False, detail=f"not proven: {why}")


def check_no_network_egress(obs: _Observed, limits: Limits) -> Check:
    """No TCP/UDP path out: not to the internet, not to the host (a live listener counts arrivals)."""
    name = "no_network_egress"
    net, why = _section(obs, "network")
    if net is None:
        return _failed(name, why)
    connected = [f"{h}:{p}" for h, p, r in net["connect"] if r == "connected"]
    sent = [f"{h}:{p}" for h, p, r in net["udp"] if r == "sent"]
    extra_ifaces = [i for i in net["interfaces"] if i != "lo"]
    problems = []
    if connected:
        problems.append(f"TCP connected to {', '.join(connected)}")
    if sent:
        problems.append(f"UDP sent to {', '.join(sent)}")
    if extra_ifaces:
        problems.append(f"interfaces besides lo: {', '.join(extra_ifaces)}")
    if obs.accepted:
        problems.append(f"the host listener accepted connections from {', '.join(obs.accepted)}")
    if not obs.armed:
        problems.append("no host address where the listener was reachable from the host (host path unproven)")
    errors = sorted({r for _, _, r in net["connect"] + net["udp"]})
    detail = "; ".join(problems) or (
        f"interfaces {net['interfaces']}; {len(net['connect'])} TCP and {len(net['udp'])} UDP attempts failed "
        f"({', '.join(errors)}), incl. the host at {', '.join(f'{a}:{obs.listener_port}' for a in obs.armed)} "
        "(its listener got 0)"
    )
    evidence = {
        "interfaces": net["interfaces"],
        "connect": net["connect"],
        "udp": net["udp"],
        "host_addresses_armed": list(obs.armed),
        "listener_port": obs.listener_port,
        "listener_accepted": list(obs.accepted),
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_dns(obs: _Observed, limits: Limits) -> Check:
    name = "no_dns"
    net, why = _section(obs, "network")
    if net is None:
        return _failed(name, why)
    resolved = {
        host: r for host, r in net["dns"].items() if not (isinstance(r, str) and r.startswith("error:"))
    }
    detail = (
        f"resolved {resolved}"
        if resolved
        else f"{len(net['dns'])} names failed to resolve ({', '.join(sorted(set(net['dns'].values())))})"
    )
    return Check(
        name=name, passed=not resolved and bool(net["dns"]), detail=detail, evidence={"dns": net["dns"]}
    )


def check_root_fs_read_only(obs: _Observed, limits: Limits) -> Check:
    """Nothing of the image or the mounts can be written; only /tmp, /out and /dev/shm (the controls) can."""
    name = "root_fs_read_only"
    writes, why = _section(obs, "writes")
    if writes is None:
        return _failed(name, why)
    mounts = obs.probe.get("mounts")
    root = [m for m in mounts if m["mountpoint"] == "/"][-1:] if isinstance(mounts, list) else []
    root_options = sorted(set(root[0]["options"]) | set(root[0]["super_options"])) if root else []
    problems = []
    written = [d for d in READ_ONLY_DIRS if writes["create"].get(d) == "ok"]
    written += [f for f in READ_ONLY_FILES if writes["open"].get(f) == "ok"]
    missing = [p for p in READ_ONLY_DIRS if p not in writes["create"]] + [
        p for p in READ_ONLY_FILES if p not in writes["open"]
    ]
    if written:
        problems.append(f"writable: {', '.join(written)}")
    if missing:
        problems.append(f"not attempted: {', '.join(missing)}")
    erofs = [d for d in ROOTFS_DIRS if writes["create"].get(d) == "EROFS"]
    if not erofs:
        problems.append("no write on the root filesystem was refused with EROFS (only permissions refused)")
    if "ro" not in root_options:
        mode = [o for o in root_options if o in ("ro", "rw")]
        problems.append(f"the root mount is not ro ({','.join(mode) if root else 'not found'})")
    mount_options = {
        m["mountpoint"]: m["options"] for m in mounts or [] if m["mountpoint"] in READ_ONLY_MOUNTS
    }
    not_ro = [p for p in READ_ONLY_MOUNTS if "ro" not in mount_options.get(p, [])]
    if not_ro:
        problems.append(f"mounts not ro: {', '.join(not_ro)}")
    refused = [d for d in WRITABLE_DIRS if writes["create"].get(d) != "ok"]
    if refused:
        problems.append(f"control failed: cannot write the writable {', '.join(refused)}")
    errnos = sorted({r for r in list(writes["create"].values()) + list(writes["open"].values()) if r != "ok"})
    detail = "; ".join(problems) or (
        f"root and {len(READ_ONLY_MOUNTS)} mounts ro; {len(READ_ONLY_DIRS) + len(READ_ONLY_FILES)} writes refused "
        f"({', '.join(errnos)}; EROFS at {', '.join(erofs)}); {', '.join(WRITABLE_DIRS)} writable"
    )
    evidence = {
        "create": writes["create"],
        "open": writes["open"],
        "root_mount_options": root_options,
        "erofs": erofs,
        "read_only_mounts": mount_options,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_non_root_user(obs: _Observed, limits: Limits) -> Check:
    name = "non_root_user"
    ident, why = _section(obs, "identity")
    if ident is None:
        return _failed(name, why)
    priv, why = _section(obs, "privilege")
    if priv is None:
        return _failed(name, why)
    ids = [ident["uid"], ident["euid"], ident["gid"], ident["egid"]]
    problems = []
    if 0 in ids:
        problems.append(f"runs as root (uid/euid/gid/egid {ids})")
    if 0 in ident["groups"]:
        problems.append("member of group 0")
    if (ident["uid"], ident["gid"]) != (limits.uid, limits.gid):
        problems.append(f"uid:gid {ident['uid']}:{ident['gid']}, expected {limits.uid}:{limits.gid}")
    if priv["setuid_0"] == "ok":
        problems.append("setuid(0) succeeded")
    detail = "; ".join(problems) or (
        f"uid {ident['uid']} gid {ident['gid']} groups {ident['groups']}; setuid(0) -> {priv['setuid_0']}"
    )
    return Check(
        name=name, passed=not problems, detail=detail, evidence=ident | {"setuid_0": priv["setuid_0"]}
    )


def check_no_capabilities(obs: _Observed, limits: Limits) -> Check:
    name = "no_capabilities"
    status, why = _section(obs, "status")
    if status is None:
        return _failed(name, why)
    priv, why = _section(obs, "privilege")
    if priv is None:
        return _failed(name, why)
    masks: dict[str, str | None] = {
        k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    }
    # The ambient set is a subset of permitted and inheritable, so when a runtime (gVisor) does not report
    # it, CapPrm = CapInh = 0 proves it empty.
    required = [k for k in masks if k != "CapAmb" or masks[k] is not None]
    problems = [f"{k}={v}" for k in required if (v := masks[k]) is None or int(v, 16) != 0]
    problems += [f"{attack} succeeded" for attack in ("chown_to_root", "raw_socket") if priv[attack] == "ok"]
    detail = "; ".join(problems) or (
        f"{'='.join(required)}=0; chown to root -> {priv['chown_to_root']}, "
        f"raw socket -> {priv['raw_socket']}"
    )
    evidence = masks | {"chown_to_root": priv["chown_to_root"], "raw_socket": priv["raw_socket"]}
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_new_privileges(obs: _Observed, limits: Limits) -> Check:
    name = "no_new_privileges"
    status, why = _section(obs, "status")
    if status is None:
        return _failed(name, why)
    scan = obs.probe.get("scan")
    setuid = list(scan.get("setuid", [])) if isinstance(scan, dict) else []
    facts = {"NoNewPrivs": status.get("NoNewPrivs"), "prctl": status.get("prctl_no_new_privs")}
    reported = {k: v for k, v in facts.items() if v is not None}
    passed = bool(reported) and all(str(v) == "1" for v in reported.values())
    detail = (
        f"{', '.join(f'{k}={v}' for k, v in facts.items())}, Seccomp={status.get('Seccomp')}; "
        f"{len(setuid)} setuid/setgid files in the image {'cannot' if passed else 'could'} raise privileges"
    )
    evidence = {
        "NoNewPrivs": status.get("NoNewPrivs"),
        "prctl_no_new_privs": status.get("prctl_no_new_privs"),
        "Seccomp": status.get("Seccomp"),
        "setuid_files": setuid,
    }
    return Check(name=name, passed=passed, detail=detail, evidence=evidence)


PIDS_SLACK = 32  # tasks the container has before the bomb (init, the probe, threads) and rounding


class _PidsReport(BaseModel):
    """The fork bomb's final line, when its container survived it."""

    model_config = ConfigDict(frozen=True)

    forked: int
    stopped_by: str
    elapsed_s: float
    fork_after: bool
    pids_max: str | None


def check_pids_limit(obs: _Observed, limits: Limits) -> Check:
    """A fork bomb gets at most pids_limit tasks and leaves the host able to start processes.

    Under runc the kernel refuses fork #pids_limit-ish with EAGAIN and the container survives. Under
    gVisor the pids cgroup also counts the sentry's own Go threads (one or more per guest task on the
    ptrace platform), so the sentry dies with "failed to create new OS thread" long before the guest
    reaches the limit (google/gvisor#2490): the whole sandbox exits, which still contains the bomb. That
    outcome passes only under runsc and is named as such; anywhere else a dead container fails.
    """
    name = "pids_limit"
    state = obs.pids_attrs.get("State") or {}
    runtime = (obs.pids_attrs.get("HostConfig") or {}).get("Runtime")
    raw = _parse_last_json(obs.pids_log)
    try:
        report = _PidsReport.model_validate(raw) if raw is not None else None
    except ValidationError:
        return Check(name=name, passed=False, detail=f"not proven: malformed fork bomb report {raw!r}")
    progress = [int(line.split()[1]) for line in obs.pids_log.splitlines() if line.startswith("forked ")]
    forked = report.forked if report else max(progress, default=0)
    problems, how = [], ""
    if not obs.host_spawn_ok:
        problems.append("the host could not start a process afterwards")
    if forked >= limits.pids_limit:
        problems.append(f"{forked} forks succeeded, at least pids_limit {limits.pids_limit}")
    if report is not None:
        how = f"fork #{forked + 1} failed with {report.stopped_by} after {report.elapsed_s} s"
        if report.stopped_by != "EAGAIN":
            problems.append(f"the fork bomb stopped by {report.stopped_by} after {forked} forks, not EAGAIN")
        elif forked < limits.pids_limit - PIDS_SLACK:
            problems.append(f"EAGAIN after only {forked} forks: a limit other than pids_limit bit")
        if not report.fork_after:
            problems.append("the container could not fork after the bomb was defused")
        if state.get("ExitCode") != 0:
            problems.append(f"the probe exited {state.get('ExitCode')}")
    elif str(obs.pids_attrs.get("Name", "")).lstrip("/") in obs.timed_out:
        problems.append(f"the fork bomb was still running after {PROBE_TIMEOUT_S:.0f} s")
    elif runtime == "runsc" and not state.get("OOMKilled") and state.get("ExitCode") not in (0, None):
        how = (
            f"the gVisor sandbox died as a whole (exit {state.get('ExitCode')}) after {forked} forks: "
            "the sentry's threads share the pids limit (google/gvisor#2490)"
        )
    else:
        problems.append(
            f"the container died (exit {state.get('ExitCode')}, OOMKilled {state.get('OOMKilled')}) "
            f"after {forked} forks; log {obs.pids_log[-200:]!r}"
        )
    detail = "; ".join(problems) or f"{how}; pids_limit {limits.pids_limit}; the host still starts processes"
    evidence = {
        "forked": forked,
        "stopped_by": report.stopped_by if report else None,
        "container_survived": report is not None,
        "fork_after": report.fork_after if report else None,
        "pids_max": report.pids_max if report else None,
        "pids_limit": limits.pids_limit,
        "exit_code": state.get("ExitCode"),
        "runtime": runtime,
        "host_spawn_ok": obs.host_spawn_ok,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_memory_limit(obs: _Observed, limits: Limits) -> Check:
    """Touching memory past the limit gets the container SIGKILLed below the limit, flagged OOMKilled.

    Under gVisor the engine sometimes misses the OOM event and reports exit 137 without the flag (about
    one run in six here); the SIGKILL below the limit, with nothing else that could have sent it, still
    proves the limit held, so that case passes under runsc and says so. Under runc the flag is required.
    """
    name = "memory_limit"
    state = obs.mem_attrs.get("State") or {}
    runtime = (obs.mem_attrs.get("HostConfig") or {}).get("Runtime")
    allocated = [int(line) for line in obs.mem_log.split() if line.isdigit()]
    peak = max(allocated, default=0)
    survived = "survived" in obs.mem_log
    killed = (
        state.get("ExitCode") == 128 + 9
        and str(obs.mem_attrs.get("Name", "")).lstrip("/") not in obs.timed_out
    )
    problems = []
    if survived or peak > MEM_PROBE_MB:
        problems.append(f"allocated {peak} MiB past the {MEM_PROBE_MB} MiB limit")
    if not allocated:
        problems.append(f"the memory probe allocated nothing (log {obs.mem_log[-200:]!r})")
    if state.get("OOMKilled"):
        how = f"OOMKilled, exit {state.get('ExitCode')}"
    elif runtime == "runsc" and killed:
        how = "SIGKILLed, exit 137; the engine missed the OOM event, as it sometimes does under runsc"
    else:
        how = ""
        problems.append(f"the engine did not report OOMKilled (exit {state.get('ExitCode')})")
    detail = "; ".join(problems) or (
        f"{how}, after touching {peak} MiB under a {MEM_PROBE_MB} MiB limit "
        f"(TRAIN's own {limits.mem_limit_mb} MiB is in hardening_flags)"
    )
    evidence = {
        "oom_killed": state.get("OOMKilled"),
        "exit_code": state.get("ExitCode"),
        "runtime": runtime,
        "allocated_mib": peak,
        "limit_mib": MEM_PROBE_MB,
        "survived": survived,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_no_val_data(obs: _Observed, limits: Limits) -> Check:
    """No file in the container matches a validation shard; the same search finds the train shard."""
    name = "no_val_data"
    scan, why = _section(obs, "scan")
    if scan is None:
        return _failed(name, why)
    problems = []
    if scan["hits"]["val"]:
        problems.append(f"validation shards visible at {', '.join(scan['hits']['val'])}")
    if scan["val_dir_exists"]:
        problems.append(f"{C.CONTAINER_DATA}/{C.VAL_DIRNAME} exists")
    if not isinstance(scan["data_listing"], list) or C.VAL_DIRNAME in scan["data_listing"]:
        problems.append(f"{C.CONTAINER_DATA} holds {scan['data_listing']}")
    if not obs.val_fingerprints:
        problems.append(f"no validation shards on the host under {obs.data_dir} to search for")
    if obs.train_fingerprints and not scan["hits"]["train"]:
        problems.append("control failed: the search did not find the mounted train shard either")
    detail = "; ".join(problems) or (
        f"searched {scan['files']} files in {scan['scan_s']} s: none matches the {len(obs.val_fingerprints)} "
        f"val shard(s); train shard found at {scan['hits']['train'][0]}; {C.CONTAINER_DATA} = {scan['data_listing']}"
    )
    evidence = {
        "files_scanned": scan["files"],
        "unreadable": scan["unreadable"],
        "val_hits": scan["hits"]["val"],
        "train_hits": scan["hits"]["train"],
        "val_shards_on_host": len(obs.val_fingerprints),
        "data_listing": scan["data_listing"],
        "val_dir_exists": scan["val_dir_exists"],
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_output_cap(obs: _Observed, limits: Limits) -> Check:
    """Writing past the output channel's cap fails (ENOSPC/EFBIG) at the configured size."""
    name = "output_cap"
    out, why = _section(obs, "output")
    if out is None:
        return _failed(name, why)
    cap = limits.output_limit_mb * MiB
    problems = []
    if out["stopped_by"] not in OUTPUT_FULL_ERRNOS:
        problems.append(f"wrote {out['written'] / MiB:.0f} MiB without hitting a cap ({out['stopped_by']})")
    if out["written"] > cap + MiB:
        problems.append(f"wrote {out['written'] / MiB:.1f} MiB, above the {limits.output_limit_mb} MiB cap")
    if out["written"] < 0.9 * cap:
        problems.append(
            f"stopped at {out['written'] / MiB:.1f} MiB, well below the configured {limits.output_limit_mb} MiB"
        )
    detail = "; ".join(problems) or (
        f"write failed with {out['stopped_by']} after {out['written'] / MiB:.1f} MiB (cap {limits.output_limit_mb} MiB)"
    )
    return Check(name=name, passed=not problems, detail=detail, evidence=out | {"cap_bytes": cap})


def check_no_secrets_in_env(obs: _Observed, limits: Limits) -> Check:
    """The controller's secrets (and a canary API key planted for the check) appear in no environment."""
    name = "no_secrets_in_env"
    env, why = _section(obs, "env")
    if env is None:
        return _failed(name, why)
    environs = {"self": env["self"]} | {f"pid {p}": e for p, e in env["procs"].items() if isinstance(e, dict)}
    engine_env = {
        "engine Config.Env": dict(
            e.split("=", 1) for e in (obs.probe_attrs.get("Config") or {}).get("Env") or [] if "=" in e
        )
    }
    leaks = []
    for where, variables in (environs | engine_env).items():
        for secret_name, value in obs.controller_secrets.items():
            if secret_name in variables or any(value in v for v in variables.values()):
                leaks.append(f"{secret_name} in {where}")
    if CANARY_NAME not in obs.controller_secrets:
        leaks.append("the canary was not planted in the controller's environment")
    names = sorted(env["self"])
    detail = "; ".join(leaks) or (
        f"{len(obs.controller_secrets)} controller secret(s) incl. canary {CANARY_NAME} absent from "
        f"{len(environs)} environ(s) and the engine's record; container env: {', '.join(names)}"
    )
    evidence = {
        "secrets_checked": sorted(obs.controller_secrets),
        "leaks": leaks,
        "container_env_names": names,
        "environs_read": sorted(environs),
        "environs_unreadable": sorted(p for p, e in env["procs"].items() if not isinstance(e, dict)),
    }
    return Check(name=name, passed=not leaks, detail=detail, evidence=evidence)


def check_no_engine_socket(obs: _Observed, limits: Limits) -> Check:
    name = "no_engine_socket"
    scan, why = _section(obs, "scan")
    if scan is None:
        return _failed(name, why)
    present = [p for p, exists in scan["engine_sockets"].items() if exists]
    mounted = [
        m.get("Source", "")
        for m in obs.probe_attrs.get("Mounts") or []
        if str(m.get("Source", "")).endswith(".sock")
    ]
    problems = []
    if present:
        problems.append(f"present: {', '.join(present)}")
    if scan["sockets"]:
        problems.append(f"socket files: {', '.join(scan['sockets'][:10])}")
    if mounted:
        problems.append(f"sockets mounted from the host: {', '.join(mounted)}")
    detail = "; ".join(problems) or (
        f"none of {len(ENGINE_SOCKETS)} engine socket paths exists; no socket file among {scan['files']} files"
    )
    evidence = {
        "engine_sockets": scan["engine_sockets"],
        "socket_files": scan["sockets"],
        "mounted_sockets": mounted,
    }
    return Check(name=name, passed=not problems, detail=detail, evidence=evidence)


def check_hardening_flags(obs: _Observed, limits: Limits) -> Check:
    """The engine's own record of the TRAIN probe carries every hardening flag with the production values."""
    name = "hardening_flags"
    host = obs.probe_attrs.get("HostConfig") or {}
    config = obs.probe_attrs.get("Config") or {}
    mem = limits.mem_limit_mb * MiB
    expected: dict[str, tuple[Any, bool]] = {
        "NetworkMode": (host.get("NetworkMode"), host.get("NetworkMode") == "none"),
        "ReadonlyRootfs": (host.get("ReadonlyRootfs"), host.get("ReadonlyRootfs") is True),
        "CapDrop": (host.get("CapDrop"), [c.upper() for c in host.get("CapDrop") or []] == ["ALL"]),
        "CapAdd": (host.get("CapAdd"), not host.get("CapAdd")),
        "Privileged": (host.get("Privileged"), host.get("Privileged") is False),
        "SecurityOpt": (
            host.get("SecurityOpt"),
            any(o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or []),
        ),
        "PidsLimit": (host.get("PidsLimit"), host.get("PidsLimit") == limits.pids_limit),
        "Memory": (host.get("Memory"), host.get("Memory") == mem),
        "MemorySwap": (host.get("MemorySwap"), host.get("MemorySwap") == mem),
        "Devices": (host.get("Devices"), not host.get("Devices")),
        "User": (config.get("User"), config.get("User") == f"{limits.uid}:{limits.gid}"),
    }
    rw_mounts = [m.get("Destination") for m in obs.probe_attrs.get("Mounts") or [] if m.get("RW")]
    bad = [f"{k}={v!r}" for k, (v, ok) in expected.items() if not ok]
    if rw_mounts != [C.CONTAINER_OUT]:
        bad.append(f"writable mounts {rw_mounts}, expected only {C.CONTAINER_OUT}")
    detail = "; ".join(bad) or (
        f"network none, read-only root, CapDrop ALL, no-new-privileges, pids {limits.pids_limit}, "
        f"memory = swap = {limits.mem_limit_mb} MiB, user {limits.uid}:{limits.gid}, only {C.CONTAINER_OUT} writable"
    )
    evidence = {k: v for k, (v, _) in expected.items()} | {"rw_mounts": rw_mounts}
    return Check(name=name, passed=not bad, detail=detail, evidence=evidence)


JUDGES: tuple[Callable[[_Observed, Limits], Check], ...] = (
    check_no_network_egress,
    check_no_dns,
    check_root_fs_read_only,
    check_non_root_user,
    check_no_capabilities,
    check_no_new_privileges,
    check_pids_limit,
    check_memory_limit,
    check_no_val_data,
    check_output_cap,
    check_no_secrets_in_env,
    check_no_engine_socket,
    check_hardening_flags,
)


def judge_all(obs: _Observed, limits: Limits) -> tuple[Check, ...]:
    """Every property's check; an observation of the wrong shape fails its property, never the run."""
    checks = []
    for judge in JUDGES:
        try:
            checks.append(judge(obs, limits))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            name = judge.__name__.removeprefix("check_")
            checks.append(_failed(name, f"malformed observations ({type(exc).__name__}: {exc})"))
    return tuple(checks)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register preflight's flags on a (sub)parser."""
    parser.add_argument(
        "--profile", choices=("tiny", "gpu"), default="tiny", help="limits and data of this profile"
    )
    parser.add_argument(
        "--runtime", choices=("runc", "runsc"), help="container runtime (default: the engine's)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="prepared data (default: prepare.py's folder for the profile)"
    )
    parser.add_argument("--image", default=C.TRAINER_IMAGE, help="trainer image to probe")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line, last")


def format_table(result: PreflightResult) -> str:
    width = max(len(c.name) for c in result.checks)
    failed = [c for c in result.checks if not c.passed]
    remap = ""
    if result.tier is HardeningTier.USERNS_REMAP and result.uid_map:
        inside, host, count = result.uid_map[0]
        remap = f", uids {inside}-{inside + count - 1} = host {host}-{host + count - 1}"
    lines = [
        f"preflight: profile {result.profile}, runtime {result.runtime} (tier: {result.tier.value}{remap}), "
        f"engine {result.engine_version}, cgroup v{result.cgroup_version}",
        f"image {result.image} ({result.image_id[:19]})",
        "",
        f"{'PROPERTY':<{width}}  RESULT  DETAIL",
    ]
    lines += [f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}" for c in result.checks]
    lines.append("")
    verdict = (
        f"all {len(result.checks)} properties hold"
        if not failed
        else f"{len(failed)} of {len(result.checks)} properties FAILED: {', '.join(c.name for c in failed)}"
    )
    lines.append(f"{verdict} ({result.wall_s:.1f} s)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`python -m harness preflight`: 0 when every property holds, 1 when one fails, 3-7 when it cannot run."""
    profile = getattr(args, "profile", None) or "tiny"
    runtime = getattr(args, "runtime", None)
    as_json = bool(getattr(args, "json", False))
    try:
        limits = Limits.for_profile(profile, **({"runtime": runtime} if runtime else {}))
        client = connect()
        result = run_preflight(
            client,
            limits,
            getattr(args, "data_dir", None),
            profile=profile,
            image=getattr(args, "image", None) or C.TRAINER_IMAGE,
        )
    except SandboxError as exc:
        code = _exit_code(exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if as_json:
            print(
                json.dumps(
                    {"passed": False, "error": type(exc).__name__, "message": str(exc), "exit_code": code}
                )
            )
        return code
    print(format_table(result), file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(result.model_dump_json())
    return EXIT_OK if result.passed else EXIT_PROPERTY_FAILED


def _exit_code(exc: SandboxError) -> int:
    for kind, code in (
        (EngineUnavailable, EXIT_ENGINE),
        (ImageMissing, EXIT_IMAGE),
        (DataMissing, EXIT_DATA),
    ):
        if isinstance(exc, kind):
            return code
    return EXIT_SANDBOX
