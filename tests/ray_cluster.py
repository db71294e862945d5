"""A real local Ray cluster for the cluster tests: a head with no trial slots and worker nodes with
one each, started with `ray start` (token authentication on, no dashboard, a small object store),
plus a fake node runner that writes a trial folder without an engine.

Every node's processes carry the cluster's own temp folder on their command line, so `stop()` and
`kill_node()` end exactly the processes this cluster started, by pid, never by name. The same
commands are what `make ray-local` runs (tests/ray_cluster.py is also its implementation:
`python -m tests.ray_cluster start|stop`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.cluster.node import ENV_NODE_CPUSET
from sandbox.engine.limits import Limits
from sandbox.verdict import TrialSpec, Verdict
from tests.test_loop_fakes_honour_the_protocols import FakeSandbox

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 100_000_000
START_TIMEOUT_S = 120
ENV_FAKE_IMAGE = "AUTORESEARCH_FAKE_IMAGE"  # the image id a FakeNodeRunner on this node reports
FAKE_IMAGE = "sha256:" + "f" * 64
STATE_FILE = "cluster.json"


class ClusterStartFailed(RuntimeError):
    """`ray start` failed or timed out."""


@dataclass
class LocalCluster:
    """A head and worker nodes on this host (see the module docstring)."""

    root: Path  # holds the token, Ray's temp folder and the state file
    address: str = ""
    nodes: dict[str, str] = field(default_factory=dict)  # node name -> Ray node id

    @property
    def token_path(self) -> Path:
        return self.root / "token"

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    def env(self) -> dict[str, str]:
        """What a driver needs to connect (token authentication)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    def _ray_start(self, args: list[str], extra_env: dict[str, str] | None = None) -> str:
        env = os.environ | self.env() | (extra_env or {}) | {"RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run(
            [RAY, "start", *args, "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterStartFailed(f"ray start {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout + done.stderr

    def start_head(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            self.token_path.write_text(secrets.token_hex(32), encoding="ascii")
            self.token_path.chmod(0o600)
        self._ray_start(
            [
                "--head",
                "--port",
                "0",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "1",
                "--resources",
                json.dumps({"trial_slot": 0}),
                "--include-dashboard=false",
                "--node-name",
                "head",
                "--temp-dir",
                str(self.temp_dir),
            ]
        )
        self.address = self._read_address()
        self._save()

    def _read_address(self) -> str:
        # The head writes its GCS address into the session folder; `ray start` only prints it.
        latest = self.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + 30
        while not latest.exists():
            if time.monotonic() > deadline:
                raise ClusterStartFailed(f"no {latest} after starting the head")
            time.sleep(0.2)
        return latest.read_text(encoding="utf-8").strip().splitlines()[0]

    def add_node(self, name: str, *, cpuset: str | None = None, env: dict[str, str] | None = None) -> str:
        """Start a worker node with one trial slot; returns its Ray node id."""
        extra = dict(env or {})
        if cpuset:
            extra[ENV_NODE_CPUSET] = cpuset
        self._ray_start(
            [
                "--address",
                self.address,
                "--num-cpus",
                "1",
                "--resources",
                json.dumps({"trial_slot": 1}),
                "--node-name",
                name,
            ],
            extra,
        )
        self.nodes[name] = self._node_id(name)
        self._save()
        return self.nodes[name]

    def _node_id(self, name: str) -> str:
        import ray

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = [n for n in ray.nodes() if n.get("Alive") and n.get("NodeName") == name]
            if alive:
                return str(alive[-1]["NodeID"])
            time.sleep(0.3)
        raise ClusterStartFailed(f"node {name} did not join")

    def _save(self) -> None:
        (self.root / STATE_FILE).write_text(
            json.dumps({"address": self.address, "nodes": self.nodes}, indent=2), encoding="utf-8"
        )

    def pids(self, needle: str | None = None) -> list[int]:
        """Processes of this cluster (their command line names its temp folder), optionally only
        those whose command line also contains `needle`."""
        mine: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(self.temp_dir) in cmd and (needle is None or needle in cmd):
                mine.append(int(entry.name))
        return mine

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a worker node's raylet (the node is lost); returns the pids killed."""
        node_id = self.nodes[name]
        pids = [p for p in self.pids("raylet") if _cmdline_has(p, f"--node_id={node_id}")]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        del self.nodes[name]  # lost: later tests of the session see only the live nodes
        return pids

    def stop(self) -> None:
        """End every process of this cluster, by pid: SIGTERM, then SIGKILL what is left."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def start_cluster(root: Path, nodes: int, *, cpusets: list[str] | None = None) -> LocalCluster:
    """Start a head and `nodes` worker nodes, and connect this process to it as the driver."""
    cluster = LocalCluster(root)
    try:
        cluster.start_head()
        use_token(cluster.env())
        import ray

        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
        for k in range(nodes):
            cluster.add_node(f"node-{k}", cpuset=cpusets[k] if cpusets else None)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def use_token(env: dict[str, str]) -> None:
    """Token authentication for this process's Ray driver. Ray's core reads RAY_AUTH_MODE into its
    config when it is first loaded, so a process that already imported ray reloads that config."""
    os.environ.update(env)
    if "ray" in sys.modules:
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


# --------------------------------------------------------------------------- the fake node runner


class FakeNodeRunner:
    """A node runner without an engine: FakeSandbox writes the trial folder (score from the candidate).

    It reports the image id in its node's AUTORESEARCH_FAKE_IMAGE (a default otherwise), so a node
    started with another value is a node with another trainer image. `delay_s` holds each trial
    that long; `marks` (a folder) gets one file per trial started, naming the node and the Ray
    worker's pid, so a test can tell where a trial runs and whether its process is still alive.
    """

    name = "fake"

    def __init__(self, *, delay_s: float = 0.0, marks: Path | None = None) -> None:
        self.delay_s = delay_s
        self.marks = str(marks) if marks else None

    def image_id(self) -> str | None:
        return os.environ.get(ENV_FAKE_IMAGE, FAKE_IMAGE)

    def data_sha256(self, profile: str, data_dir: str | None) -> str | None:
        return "d" * 64

    def hardware_class(self, profile: str) -> str:
        return "cpu:fake"

    def reap(self) -> tuple[int, int]:
        return 0, 0

    def preflight(self, profile: str, limits: Limits, data_dir: str | None) -> list[str]:
        return []

    def run(self, spec: TrialSpec, data_dir: str | None, image_id: str) -> Verdict:
        import ray

        if self.marks:
            node = ray.get_runtime_context().get_node_id()
            mark = Path(self.marks) / f"{spec.trial_id}.{os.getpid()}"
            mark.write_text(json.dumps({"node_id": node, "pid": os.getpid()}), encoding="utf-8")
        time.sleep(self.delay_s)
        return FakeSandbox().run_trial(spec)


def marks(folder: Path) -> Iterator[dict[str, object]]:
    for path in sorted(folder.iterdir()):
        yield {"trial": path.name.rsplit(".", 1)[0], **json.loads(path.read_text(encoding="utf-8"))}


def main(argv: list[str]) -> int:
    """`start ROOT NODES` (prints the address and the env to export) or `stop ROOT`."""
    if len(argv) >= 2 and argv[0] == "stop":
        LocalCluster(Path(argv[1])).stop()
        print(f"stopped the cluster in {argv[1]}")
        return 0
    if len(argv) >= 3 and argv[0] == "start":
        root, n = Path(argv[1]), int(argv[2])
        from sandbox.engine.gpu import host_cpus, split_cpusets

        cpus = host_cpus()
        cpusets = list(split_cpusets(n, cpus)) if n <= len(cpus) else None
        cluster = start_cluster(root, n, cpusets=cpusets)
        print(f"Ray cluster: head + {n} worker nodes ({', '.join(cluster.nodes)}), one trial slot each")
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}")
        print(f"python -m harness run --ray {cluster.address} ...")
        print(cluster.address)
        return 0
    print("usage: python -m tests.ray_cluster start ROOT NODES | stop ROOT", file=sys.stderr)
    return 2


def fresh_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp"))


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
