"""Attack: reach the outside world or the host (exfiltrate, download weights, talk to the engine).

Tries TCP to every (host, port) in TARGETS, UDP to a public resolver, and a DNS lookup, then prints
one line `NET <json>` with what happened to each. The test fills TARGETS in.
"""

import json
import socket

TARGETS: list[tuple[str, int]] = []  # filled in by the test

results = {}
for host, port in TARGETS:
    try:
        with socket.create_connection((host, port), timeout=3):
            results[f"tcp {host}:{port}"] = "connected"
    except OSError as exc:
        results[f"tcp {host}:{port}"] = f"{type(exc).__name__}: {exc}"
try:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\0" * 12, ("8.8.8.8", 53))
        results["udp 8.8.8.8:53"] = "sent"
except OSError as exc:
    results["udp 8.8.8.8:53"] = f"{type(exc).__name__}: {exc}"
try:
    results["dns example.com"] = socket.gethostbyname("example.com")
except OSError as exc:
    results["dns example.com"] = f"{type(exc).__name__}: {exc}"
results["interfaces"] = [name for _, name in socket.if_nameindex()]
print("NET " + json.dumps(results), flush=True)
