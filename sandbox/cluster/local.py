"""A Ray cluster on this host: `make ray-local NODES=N` (`python -m sandbox.cluster.local start ROOT N`),
and the cluster the tests and benches start.

A head with no trial slots and N worker nodes with one `trial_slot` each, started with `ray start`:
token authentication (a fresh 0600 token file in ROOT), no dashboard, a 100 MB object store, usage
stats off, every node started with `--node-ip-address HOST` (`--host`, loopback by default; an
address, never a wildcard). The commands are built by `head_command` and `node_command`, so a unit
test reads exactly which flags are passed.

Ray listens on more than the given address (what it binds, as measured: docs/ARCHITECTURE.md,
"Measurements and history"); the token is what keeps other hosts out (SECURITY.md), and `start`
says so when it happens.

Every node's processes carry the cluster's own temp folder (ROOT/ray) on their command line, so
`stop()` and `kill_node()` end exactly the processes this cluster started, by pid, never by name.
ROOT/cluster.json holds the address and the node ids.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.cluster.node import ENV_NODE_CPUSET
from sandbox.cluster.verify import TRIAL_SLOT

logger = logging.getLogger(__name__)

# The `ray` CLI of this interpreter's environment (a venv's bin/), else the one on PATH.
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray"
DEFAULT_HOST = "127.0.0.1"
OBJECT_STORE_BYTES = 100_000_000  # Ray's default is 30% of RAM; trials move kilobytes
START_TIMEOUT_S = 120
STATE_FILE = "cluster.json"


class ClusterStartFailed(RuntimeError):
    """`ray start` failed or timed out, or a node did not join."""


def bind_host(host: str) -> str:
    """`host` when it is a literal address a node can bind to; a wildcard or a name is refused."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--host must be an IP address of this host, not {host!r}") from None
    if ip.is_unspecified:
        raise ValueError(f"--host {host} would listen on every interface; name one address of this host")
    return str(ip)


def common_flags() -> list[str]:
    return ["--num-cpus", "1", "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]


def head_command(temp_dir: Path, host: str = DEFAULT_HOST) -> list[str]:
    """`ray start` for the head: no trial slots, so it never runs a trial; no dashboard."""
    return [
        RAY,
        "start",
        "--head",
        "--port",
        "0",  # a free port for the GCS; the address is read back from the temp folder
        "--node-ip-address",
        bind_host(host),
        "--resources",
        json.dumps({TRIAL_SLOT: 0}),
        "--include-dashboard=false",
        "--node-name",
        "head",
        "--temp-dir",
        str(temp_dir),
        *common_flags(),
    ]


def node_command(address: str, name: str, host: str = DEFAULT_HOST) -> list[str]:
    """`ray start` for a worker node with one trial slot, joining the head at `address`."""
    return [
        RAY,
        "start",
        "--address",
        address,
        "--node-ip-address",
        bind_host(host),
        "--resources",
        json.dumps({TRIAL_SLOT: 1}),
        "--node-name",
        name,
        *common_flags(),
    ]


def token_env(token_path: Path) -> dict[str, str]:
    """What `ray start` and a driver need for token authentication."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


@dataclass
class LocalCluster:
    """A head and worker nodes on this host (see the module docstring)."""

    root: Path  # holds the token, Ray's temp folder and the state file
    host: str = DEFAULT_HOST
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
        return token_env(self.token_path)

    def _ray_start(self, argv: list[str], extra_env: dict[str, str] | None = None) -> str:
        env = os.environ | self.env() | (extra_env or {}) | {"RAY_USAGE_STATS_ENABLED": "0"}
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterStartFailed(f"{' '.join(argv[1:4])} did not return in {START_TIMEOUT_S} s") from exc
        if done.returncode != 0:
            raise ClusterStartFailed(f"{' '.join(argv[1:])} failed: {done.stderr[-2000:]}")
        return done.stdout + done.stderr

    def start_head(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.token_path.exists():
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32))
        self._ray_start(head_command(self.temp_dir, self.host))
        self.address = self._read_address()
        self._save()

    def _read_address(self) -> str:
        # The head writes its GCS address into the temp folder; `ray start` only prints it.
        latest = self.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + 30
        while not latest.exists():
            if time.monotonic() > deadline:
                raise ClusterStartFailed(f"no {latest} after starting the head")
            time.sleep(0.2)
        return latest.read_text(encoding="utf-8").strip().splitlines()[0]

    def add_node(self, name: str, *, cpuset: str | None = None, env: dict[str, str] | None = None) -> str:
        """Start a worker node with one trial slot; returns its Ray node id (needs a connected driver)."""
        extra = dict(env or {})
        if cpuset:
            extra[ENV_NODE_CPUSET] = cpuset
        self._ray_start(node_command(self.address, name, self.host), extra)
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
        state = {"address": self.address, "host": self.host, "nodes": self.nodes}
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    def pids(self, needle: str | None = None) -> list[int]:
        """Processes of this cluster: those whose command line names its temp folder and their
        descendants (Ray's agents and workers retitle themselves `ray::...`); with `needle`, only
        the named ones whose command line also contains it."""
        named: set[int] = set()
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            cmd = _cmdline(pid)
            if str(self.temp_dir) in cmd and (needle is None or needle in cmd):
                named.add(pid)
            try:
                parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
        if needle is not None:
            return sorted(named)
        mine, grew = set(named), True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in mine and pid not in mine}
            mine |= more
            grew = bool(more)
        return sorted(mine)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a worker node's raylet (the node is lost, as when its host dies); the pids killed."""
        node_id = self.nodes[name]
        pids = [p for p in self.pids("raylet") if f"--node_id={node_id}" in _cmdline(p)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        del self.nodes[name]
        self._save()
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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def use_token(env: dict[str, str]) -> None:
    """Token authentication for this process's Ray driver. Ray's core reads RAY_AUTH_MODE into its
    config when it is first loaded, so a process that already imported ray reloads that config."""
    os.environ.update(env)
    if "ray" in sys.modules:
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")


def start_cluster(
    root: Path, nodes: int, *, cpusets: list[str] | None = None, host: str = DEFAULT_HOST
) -> LocalCluster:
    """Start a head and `nodes` worker nodes, and connect this process to it as the driver."""
    cluster = LocalCluster(root, host=bind_host(host))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.cluster.local", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a head and NODES worker nodes; print the address")
    start.add_argument("root", type=Path, help="folder for the token, Ray's temp folder and cluster.json")
    start.add_argument("nodes", type=int)
    start.add_argument(
        "--host", default=DEFAULT_HOST, help="the address every node binds (default: loopback)"
    )
    stop = sub.add_parser("stop", help="end every process of the cluster in ROOT, by pid")
    stop.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "stop":
        LocalCluster(args.root).stop()
        print(f"stopped the cluster in {args.root}")
        return 0
    from sandbox.engine.gpu import host_cpus, split_cpusets

    if (args.root / STATE_FILE).exists():
        print(f"a cluster state is in {args.root}: stop it first", file=sys.stderr)
        return 1
    cpus = host_cpus()
    cpusets = list(split_cpusets(args.nodes, cpus)) if args.nodes <= len(cpus) else None
    try:
        cluster = start_cluster(args.root, args.nodes, cpusets=cpusets, host=args.host)
    except (ClusterStartFailed, ValueError) as exc:
        print(f"could not start the cluster: {exc}", file=sys.stderr)
        return 1
    print(f"Ray cluster: head + {args.nodes} worker nodes ({', '.join(cluster.nodes)}), one trial slot each")
    advertised = cluster.address.rsplit(":", 1)[0].strip("[]")
    if advertised != cluster.host:
        print(
            f"note: Ray advertises {advertised}, not {cluster.host}, and its GCS, raylets and workers listen"
            " on every interface: only the token keeps other hosts out (SECURITY.md, 'A cluster run')"
        )
    print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}")
    print(f"python -m harness run --ray {cluster.address} ...")
    print(cluster.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
