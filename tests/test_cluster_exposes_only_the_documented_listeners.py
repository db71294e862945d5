"""A local cluster listens exactly where SECURITY.md says it does (Ray 2.60, measured here).

The threat: someone on the network reaching a Ray port. Token authentication is what stops them, so
the cluster's exposure must be known, not assumed. Measured on the cluster `make ray-local` starts
(the `ray_cluster` fixture, `--node-ip-address 127.0.0.1`): `ray start` advertises the host's routable
address instead of loopback; the GCS, the raylets and every Ray worker (the driver too) listen on all
interfaces; Ray's agents listen only on the advertised address or loopback; the dashboard process
(it runs even with `--include-dashboard=false`, in minimal mode) listens nowhere. If a Ray upgrade
changes any of this, this test fails: update SECURITY.md's cluster section with what it now does.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from sandbox.cluster.local import LocalCluster

WILDCARDS = {"0.0.0.0", "::"}
CORE = ("gcs_server", "raylet")  # C++ gRPC servers; Ray workers are `ray::...` processes


def _tcp_listeners() -> Iterator[tuple[str, int, str]]:
    """(address, port, socket inode) of every listening TCP socket in this network namespace."""
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if width == 8 else socket.AF_INET6
            yield socket.inet_ntop(family, packed), int(hex_port, 16), fields[9]


def _children(pids: set[int]) -> set[int]:
    found = set(pids)
    while True:
        more = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in found and int(entry.name) not in found:
                more.add(int(entry.name))
        if not more:
            return found
        found |= more


def _socket_owners(pids: set[int]) -> dict[str, int]:
    owners: dict[str, int] = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[target[8:-1]] = pid
    return owners


def _name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    first = cmd[0].decode(errors="replace")
    if first.startswith("ray::"):
        return first.split()[0]
    script = next((c.decode() for c in cmd[1:3] if c.endswith(b".py")), "")
    return Path(script).name if script else Path(first).name


def test_cluster_listeners_are_the_documented_ones(ray_cluster: LocalCluster) -> None:
    import ray

    # Start a worker on each node, so that Ray workers are among the listeners.
    @ray.remote(num_cpus=0, resources={"trial_slot": 1})
    def pid() -> int:
        return os.getpid()

    ray.get([pid.remote() for _ in ray_cluster.nodes])
    advertised = ray_cluster.address.rsplit(":", 1)[0].strip("[]")
    assert not ipaddress.ip_address(advertised).is_unspecified

    pids = _children(set(ray_cluster.pids()))
    owners = _socket_owners(pids | {os.getpid()})
    seen: dict[str, set[str]] = {}
    for address, port, inode in _tcp_listeners():
        owner = owners.get(inode)
        if owner is None:
            continue
        name = "driver" if owner == os.getpid() else _name(owner)
        seen.setdefault(name, set()).add(address)
        is_worker = name.startswith("ray::") and not name.endswith("Agent")
        if address in WILDCARDS:
            assert name in CORE or is_worker or name == "driver", (
                f"{name} (pid {owner}) listens on {address}:{port}: not in SECURITY.md's list"
            )
        else:
            loopback = ipaddress.ip_address(address).is_loopback
            assert loopback or address == advertised, f"{name} listens on {address}:{port}"
        assert name != "dashboard.py", f"the dashboard listens on {address}:{port}"

    if ipaddress.ip_address(advertised).is_loopback:
        return  # a host with no routable address: Ray had nothing to advertise but loopback
    assert seen.get("gcs_server", set()) & WILDCARDS, (
        f"the GCS no longer listens on all interfaces ({seen.get('gcs_server')}): update SECURITY.md"
    )
    assert seen.get("raylet", set()) & WILDCARDS, f"raylets: {seen.get('raylet')}: update SECURITY.md"
