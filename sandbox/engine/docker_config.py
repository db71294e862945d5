"""What the Docker engine is asked for: the client, the pinned image, and every volume's and container's settings.

Pure functions of the trial's spec: no container is created here, so tests and preflight read the
exact settings trials get (preflight attacks the TRAIN configuration built by `train_config`).

Deliberate properties:
- The image is resolved to its ID once per sandbox and every container is created from that ID, so a
  rebuilt `:latest` cannot change a running experiment.
- The containers' environment is built from scratch (profile, paths, seed, HOME, TMPDIR, Python
  flags): never the controller's, so no API key or token can leak into the candidate's world.
- TRAIN mounts the candidate, train/ and tokenizer/ read-only and the output volume; EVAL mounts the
  output volume read-only, val/, tokenizer/ and its report volume, never the candidate.
- GPUs are passed only as explicit device ids from the spec's lease, never "all".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import docker
from docker.types import DeviceRequest, Mount

from sandbox import constants as C
from sandbox.engine.limits import Limits
from sandbox.retry import engine_errors, infra_retry
from sandbox.verdict import SandboxError, TrialSpec

logger = logging.getLogger(__name__)

API_TIMEOUT_S = 60  # every HTTP call to the engine, cleanup included
OUTPUT_MAX_INODES = 4096  # files in the output channel; inodes cost memory the size cap does not see
REPORT_MAX_INODES = 64
HOLDER_MEM_MB = 64
HOLDER_PIDS = 16
REPORT_PATH = f"{C.CONTAINER_REPORT_DIR}/{C.REPORT_FILE}"
EVAL_GO_FILE = "/tmp/autoresearch-eval-go"  # in the evaluator's private /tmp: created by exec after TRAIN
GO_COMMAND = ["python", "-I", "-S", "-c", f"open({EVAL_GO_FILE!r}, 'w').close()"]
# The pre-warmed evaluator's CPU weight (cgroup cpu.shares; containers default to 1024): a quarter of
# TRAIN's, so its start-up runs in TRAIN's idle moments (docs/ARCHITECTURE.md, "One trial's path").
EVAL_CPU_SHARES = 256
RUNNING = frozenset({"created", "running", "restarting", "paused"})

# Run in the holder (trusted code, the holder's read-only view of the output channel).
OUTPUT_PROBE = f"""
import json, os, stat
s = os.statvfs({C.CONTAINER_OUT!r})
try:
    a = os.lstat({C.CONTAINER_OUT + "/" + C.ARTIFACT_FILE!r})
except FileNotFoundError:
    a = None
print(json.dumps({{"free_bytes": s.f_bavail * s.f_frsize, "block": s.f_frsize, "free_inodes": s.f_favail,
    "artifact_regular": a is not None and stat.S_ISREG(a.st_mode), "artifact_bytes": a and a.st_size}}))
"""


def connect(timeout_s: int = API_TIMEOUT_S) -> docker.DockerClient:
    """A client for the engine in the environment (DOCKER_HOST or the default socket), checked with a ping."""
    with engine_errors("connecting to the Docker engine"):
        client = docker.from_env(timeout=timeout_s)
        infra_retry(client.ping)()
    return client


def remapped_root(client: docker.DockerClient) -> tuple[int, int]:
    """The host uid and gid that the engine maps container root to: (0, 0) without userns-remap.

    A remapping engine says so in SecurityOptions ("name=userns") and keeps its data in
    <data-root>/<uid>.<gid>, named after exactly these ids. Container uid N is then host uid uid+N (one
    subordinate range, as `--userns-remap=default` creates; preflight's writes to /out prove it).
    """
    with engine_errors("reading the engine's configuration"):
        info: dict[str, Any] = infra_retry(client.info)()
    if not any("name=userns" in opt for opt in info.get("SecurityOptions") or []):
        return 0, 0
    uid, _, gid = Path(str(info.get("DockerRootDir") or "")).name.partition(".")
    if not (uid.isdigit() and gid.isdigit()):
        raise SandboxError(f"userns-remap engine with an unexpected data-root {info.get('DockerRootDir')!r}")
    return int(uid), int(gid)


def resolve_image(client: docker.DockerClient, ref: str = C.TRAINER_IMAGE) -> str:
    """The image's ID ("sha256:..."), which pins its content; raises ImageMissing when it is not built."""
    with engine_errors(f"resolving image {ref}"):
        image_id: str = infra_retry(client.images.get)(ref).id
    return image_id


def tmpfs_volume_options(limits: Limits, host_root: tuple[int, int], size_mb: int, inodes: int) -> str:
    """A size- and inode-capped tmpfs owned by the host ids the sandbox user maps to.

    The engine mounts the tmpfs on the host, outside any user namespace: under userns-remap its owner
    must be the host ids the container's uid:gid map to, or TRAIN cannot write its output.
    """
    uid, gid = limits.uid + host_root[0], limits.gid + host_root[1]
    return f"size={size_mb}m,nr_inodes={inodes},uid={uid},gid={gid},mode=0700,noexec,nosuid,nodev"


def holder_config(limits: Limits, out: str, report: str) -> dict[str, Any]:
    """The trusted `sleep infinity` that keeps both tmpfs volumes mounted (read-only) all trial long."""
    config = limits.common_docker_kwargs(mem_limit_mb=HOLDER_MEM_MB)
    config.pop("runtime", None)  # trusted and idle: the default runtime starts fastest
    config |= {
        "command": ["sleep", "infinity"],
        "pids_limit": HOLDER_PIDS,
        "working_dir": C.CONTAINER_APP,
        "mounts": [
            Mount(C.CONTAINER_OUT, out, "volume", read_only=True, no_copy=True),
            Mount(C.CONTAINER_REPORT_DIR, report, "volume", read_only=True, no_copy=True),
        ],
    }
    return config


def container_env(spec: TrialSpec) -> dict[str, str]:
    env = {
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONPATH": C.CONTAINER_APP,
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        C.ENV_PROFILE: spec.profile,
        C.ENV_DATA: C.CONTAINER_DATA,
        C.ENV_SEED: str(spec.seed),
    }
    if spec.limits.cpus is not None:  # a CPU quota does not change os.cpu_count(): size thread pools to it
        env["OMP_NUM_THREADS"] = str(max(1, math.floor(spec.limits.cpus)))
    return env


def gpu_requests(spec: TrialSpec) -> list[DeviceRequest]:
    if not spec.gpu_ids:
        return []
    return [DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])]


def data_mount(data_dir: Path, name: str) -> Mount:
    return Mount(f"{C.CONTAINER_DATA}/{name}", str(data_dir / name), "bind", read_only=True)


def train_config(spec: TrialSpec, candidate: Path, data_dir: Path, out: str) -> dict[str, Any]:
    """TRAIN: the candidate (ro), train/ and tokenizer/ (ro), the output volume `out` (rw) at /out."""
    limits = spec.limits
    config = limits.common_docker_kwargs(mem_limit_mb=limits.mem_limit_mb)
    config |= {
        "command": [*C.JAIL, "python", C.CONTAINER_CANDIDATE],
        "environment": container_env(spec) | {C.ENV_OUT: C.CONTAINER_OUT},
        "mounts": [
            Mount(C.CONTAINER_CANDIDATE, str(candidate), "bind", read_only=True),
            data_mount(data_dir, C.TRAIN_DIRNAME),
            data_mount(data_dir, C.TOKENIZER_DIRNAME),
            Mount(C.CONTAINER_OUT, out, "volume", read_only=False, no_copy=True),
        ],
        "device_requests": gpu_requests(spec),
    }
    return config


def eval_config(spec: TrialSpec, data_dir: Path, out: str, report: str, *, prewarm: bool) -> dict[str, Any]:
    """EVAL: the output volume (ro) at /artifact, val/ and tokenizer/ (ro), the report volume (rw).

    `prewarm`: the evaluator starts beside TRAIN and waits for its go file before reading anything.
    """
    limits = spec.limits
    config = limits.common_docker_kwargs(mem_limit_mb=limits.eval_mem_limit_mb)
    mounts = [
        Mount(C.CONTAINER_ARTIFACT, out, "volume", read_only=True, no_copy=True),
        Mount(C.CONTAINER_REPORT_DIR, report, "volume", read_only=False, no_copy=True),
        data_mount(data_dir, C.VAL_DIRNAME),
        data_mount(data_dir, C.TOKENIZER_DIRNAME),
    ]
    if (data_dir / C.DATA_MANIFEST_FILE).is_file():
        mounts.append(data_mount(data_dir, C.DATA_MANIFEST_FILE))
    config |= {
        "command": [
            *C.JAIL,
            "python",
            "-m",
            C.EVALUATOR_MODULE,
            "--profile",
            spec.profile,
            "--artifact",
            C.CONTAINER_ARTIFACT,
            "--report",
            REPORT_PATH,
            "--data",
            C.CONTAINER_DATA,
            "--device",
            "cuda" if spec.gpu_ids else "cpu",
            *(["--wait-for", EVAL_GO_FILE] if prewarm else []),
        ],
        "environment": container_env(spec),
        "working_dir": C.CONTAINER_APP,
        "mounts": mounts,
        **({"cpu_shares": EVAL_CPU_SHARES} if prewarm else {}),
        "device_requests": gpu_requests(spec),
    }
    return config
