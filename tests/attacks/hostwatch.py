"""What the host itself sees while the attack corpus runs: the outside view the attack tests assert on.

An attack reports what it saw from inside; a compromised or lying candidate could report anything,
so the tests that can also check from outside. While a tier's batch runs, `HostWatch` keeps:
- a TCP and a UDP listener on the host, on a port from `LISTENER_PORTS`, armed through the docker0
  gateway (the host reaches it there itself, the control): any connection or datagram from a
  candidate means a door to the host is open. The network attacks aim at every port in the range on
  the gateways Docker hands out, so they would find it;
- for each attack's TRAIN container, sampled from the host every `SAMPLE_S`: the host kernel's pids
  count of its cgroup (what `pids_limit` bounds), the lowest `oom_score_adj` of its host processes
  (what the host's OOM killer goes by), and whether the host could still start a process meanwhile.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from sandbox import constants as C

# The network attacks (corpus/network_egress.py, corpus/engine_socket.py) aim at each of these ports.
LISTENER_PORTS = range(47600, 47616)
SAMPLE_S = 0.5
ARM_TIMEOUT_S = 5.0
CGROUP_DIRS = (  # where the engine puts a container's cgroup: v1 cgroupfs, v1 systemd, v2 cgroupfs, v2 systemd
    "/sys/fs/cgroup/pids/docker/{id}",
    "/sys/fs/cgroup/pids/system.slice/docker-{id}.scope",
    "/sys/fs/cgroup/docker/{id}",
    "/sys/fs/cgroup/system.slice/docker-{id}.scope",
)


@dataclass
class ContainerSeen:
    """One TRAIN container as the host saw it."""

    container_id: str
    samples: int = 0  # samples with a readable cgroup
    max_pids: int = 0  # the host kernel's pids.current for the container's cgroup
    pids_max: str = ""  # the cgroup's pids.max as the host reads it
    min_oom_score_adj: int | None = None  # over every host process of the container, every sample
    host_spawn_failures: int = 0  # samples, while it ran, in which the host could not start `true`


@dataclass
class TierSeen:
    """What the host saw during one tier's batch."""

    gateway: str
    port: int
    armed: bool  # the control: the host reached its own listener through the gateway
    tcp_peers: list[str] = field(default_factory=list)
    udp_peers: list[str] = field(default_factory=list)
    containers: dict[str, ContainerSeen] = field(default_factory=dict)  # trial id -> what was seen


def docker0_gateway(client: docker.DockerClient) -> str:
    """The default bridge's gateway: the host's address as containers on that bridge see it."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(ipaddress.ip_network(config["Subnet"])[1])  # older engines omit it; docker0 takes the first


class HostWatch:
    """The listeners and the container sampler; `begin` before a tier's batch, `end` after it."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.gateway = docker0_gateway(client)
        self.tcp, self.udp = _bind_pair()
        self.port = int(self.tcp.getsockname()[1])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tier: TierSeen | None = None
        self._threads = [
            threading.Thread(target=self._accept, name="attack-tcp", daemon=True),
            threading.Thread(target=self._receive, name="attack-udp", daemon=True),
            threading.Thread(target=self._sample, name="attack-sampler", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def begin(self) -> None:
        armed = self._arm()
        with self._lock:
            self._tier = TierSeen(gateway=self.gateway, port=self.port, armed=armed)

    def end(self) -> TierSeen:
        with self._lock:
            tier, self._tier = self._tier, None
        assert tier is not None, "HostWatch.end without begin"
        return tier

    def close(self) -> None:
        self._stop.set()
        self.tcp.close()
        self.udp.close()
        for thread in self._threads:
            thread.join(timeout=10)

    # ------------------------------------------------------------------ listeners

    def _arm(self) -> bool:
        """The control: the host reaches its own listener through the gateway; then forget that peer."""
        try:
            with socket.create_connection((self.gateway, self.port), timeout=ARM_TIMEOUT_S):
                pass
        except OSError:
            return False
        time.sleep(0.2)  # let the accept thread record it before the tier starts counting
        return True

    def _accept(self) -> None:
        self.tcp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            self._record("tcp", peer[0])

    def _receive(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                _, peer = self.udp.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self._record("udp", peer[0])

    def _record(self, kind: str, peer: str) -> None:
        with self._lock:
            if self._tier is not None:
                (self._tier.tcp_peers if kind == "tcp" else self._tier.udp_peers).append(peer)

    # ------------------------------------------------------------------ the sampler

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with self._lock:
                tier = self._tier
            if tier is None:
                continue
            try:
                running = self.client.containers.list(
                    filters={"label": [f"{C.LABEL_ROLE}=train"], "name": "ar-attack-"}
                )
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                continue
            spawn_ok = bool(running) and _host_can_spawn()
            for container in running:
                trial_id = container.labels.get(C.LABEL_TRIAL, container.name)
                seen = tier.containers.setdefault(trial_id, ContainerSeen(container.id))
                _sample_cgroup(container.id, seen)
                if not spawn_ok:
                    seen.host_spawn_failures += 1


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP listener and a UDP socket on the same port, the first of LISTENER_PORTS free for both."""
    for port in LISTENER_PORTS:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind(("0.0.0.0", port))
            udp.bind(("0.0.0.0", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen(64)
        return tcp, udp
    raise RuntimeError(f"no free port in {LISTENER_PORTS} for the attack suite's host listener")


def _sample_cgroup(container_id: str, seen: ContainerSeen) -> None:
    for pattern in CGROUP_DIRS:
        folder = Path(pattern.format(id=container_id))
        try:
            current = int((folder / "pids.current").read_text())
            seen.pids_max = (folder / "pids.max").read_text().strip()
            procs = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
        seen.samples += 1
        seen.max_pids = max(seen.max_pids, current)
        for pid in procs:
            try:
                adj = int(Path(f"/proc/{pid}/oom_score_adj").read_text())
            except (OSError, ValueError):
                continue  # it exited between the two reads
            if seen.min_oom_score_adj is None or adj < seen.min_oom_score_adj:
                seen.min_oom_score_adj = adj
        return


def _host_can_spawn() -> bool:
    try:
        return subprocess.run(["true"], check=False, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
