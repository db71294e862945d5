"""Preflight's vocabulary: what the probes are told, what they report, and the result's shape.

Everything here is engine-free (no docker import), so the judges and their tests run anywhere. The
constants decide what the TRAIN probe attacks; `probe_params` turns them into its one JSON argument.

Deliberate: the places a write must fail and the ones it must succeed (the positive controls) are
listed side by side, and read-only is proven on a world-writable directory of the image (/var/tmp):
runc's kernel says EROFS before checking permissions, gVisor checks permissions first.
"""

from __future__ import annotations

import json
import logging
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from sandbox import constants as C
from sandbox.engine.limits import Limits, MiB
from sandbox.verdict import SandboxError

logger = logging.getLogger(__name__)

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


class Observed(BaseModel):
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


def section(obs: Observed, name: str) -> tuple[dict[str, Any] | None, str]:
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


def not_proven(name: str, why: str) -> Check:
    return Check(name=name, passed=False, detail=f"not proven: {why}")


def parse_last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


def probe_params(
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
