"""The controller's side of the attacks: a live host listener, the host's addresses, a planted canary key.

Positive controls, so that no check passes vacuously: the listener must be reachable from the host on
an address before the container's failure to reach that address means anything, and it counts what
arrives while the probe runs; the canary API key is put into the controller's environment for the
duration of the check, so its absence inside the container proves something.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors

from sandbox.preflight.facts import CANARY_NAME, CONNECT_TIMEOUT_S, FINGERPRINT_BYTES, SECRET_NAME

logger = logging.getLogger(__name__)


def fingerprint(path: Path) -> str:
    """The SHA-256 of a file's first FINGERPRINT_BYTES (the probe computes the same)."""
    with path.open("rb") as f:
        return hashlib.sha256(f.read(FINGERPRINT_BYTES)).hexdigest()


def fingerprints(folder: Path, limit: int | None = None) -> list[tuple[int, str]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return [(p.stat().st_size, fingerprint(p)) for p in files[:limit]]


class HostListener:
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


def host_addresses(client: docker.DockerClient) -> list[str]:
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
def canary_in_environment() -> Iterator[str]:
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


def controller_secrets() -> dict[str, str]:
    """The controller's secret-looking variables (name -> value) that a leak would carry."""
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}


def text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")
