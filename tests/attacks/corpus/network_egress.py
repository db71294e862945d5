"""Attack: reach the internet or the host: fetch reference weights, exfiltrate, talk to host services.

TCP to public addresses (Cloudflare and Google DNS on 443/53/80, IPv6 too, and the Hugging Face
CDN by address), and to the host through every gateway Docker hands out (172.17-31.0.1,
192.168.0.1..) on the engine's TCP ports 2375/2376, SSH, HTTP, and a band of high ports where the
test suite keeps a listener (tests/attacks/hostwatch.py: LISTENER_PORTS); a UDP datagram to the same
targets; name resolution; and it lists the interfaces and routes it has. If any TCP connection
opened it would send an HTTP request through it (a weights download, or the engine API on 2375).

Prints `ATTACK {"tcp": {"host:port": result}, "udp": {...}, "dns": {...}, "interfaces": [...],
"routes": n}` and exits 0 without a model. Expected: crash; only `lo`, no route, every TCP connect
and UDP send fails (ENETUNREACH), no name resolves, and the host's listener sees nothing.
"""

import errno
import json
import select
import socket
import time

LISTENER_PORTS = range(47600, 47616)  # tests/attacks/hostwatch.py binds one of these on the host
GATEWAYS = [f"172.{n}.0.1" for n in range(17, 32)] + ["192.168.0.1", "192.168.1.1", "10.0.0.1", "10.0.2.2"]
HOST_PORTS = [22, 80, 443, 2375, 2376, 5000, 8080, 10250, *LISTENER_PORTS]
PUBLIC = [("1.1.1.1", 443), ("1.1.1.1", 80), ("8.8.8.8", 53), ("8.8.8.8", 443), ("18.164.174.118", 443),
          ("2606:4700:4700::1111", 443), ("2001:4860:4860::8888", 53)]  # fmt: skip
CONNECT_BUDGET_S = 6.0  # all connects run at once (non-blocking); this is the wait for all of them


def errname(err):
    return errno.errorcode.get(err, str(err))


def connect_all(targets):
    """Non-blocking connects to every target at once; the result of each, and the open sockets."""
    results, pending = {}, {}
    for host, port in targets:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        key = f"{host}:{port}"
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            results[key] = "socket " + errname(exc.errno)
            continue
        s.setblocking(False)
        err = s.connect_ex((host, port))
        if err in (0, errno.EINPROGRESS):
            pending[s] = key
        else:
            results[key] = errname(err)
            s.close()
    deadline = time.monotonic() + CONNECT_BUDGET_S
    opened = {}
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], list(pending), [], max(0.0, deadline - time.monotonic()))
        for s in writable:
            key = pending.pop(s)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            results[key] = "connected" if err == 0 else errname(err)
            if err == 0:
                opened[key] = s
            else:
                s.close()
    for s, key in pending.items():
        results[key] = "timeout"
        s.close()
    return results, opened


def use(sock, key):
    """The door is open: ask for something worth having through it (weights, or the engine's API)."""
    host = key.rsplit(":", 1)[0]
    request = (
        b"GET /v1.41/containers/json HTTP/1.0\r\n\r\n"
        if key.endswith((":2375", ":2376"))
        else (
            b"GET /openai-community/gpt2/resolve/main/model.safetensors HTTP/1.0\r\nHost: huggingface.co\r\n\r\n"
        )
    )
    try:
        sock.setblocking(True)
        sock.settimeout(3)
        sock.sendall(request)
        return sock.recv(200).decode(errors="replace")
    except OSError as exc:
        return f"{host}: {errname(exc.errno)}"
    finally:
        sock.close()


tcp, opened = connect_all(PUBLIC + [(gw, port) for gw in GATEWAYS for port in HOST_PORTS])
used = {key: use(sock, key) for key, sock in opened.items()}
udp = {}
for host, port in [("8.8.8.8", 53), ("1.1.1.1", 53)] + [(gw, p) for gw in GATEWAYS for p in LISTENER_PORTS]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"attack-datagram", (host, port))
            udp[f"{host}:{port}"] = "sent"
    except OSError as exc:
        udp[f"{host}:{port}"] = errname(exc.errno)
dns = {}
for name in ("huggingface.co", "example.com", "pypi.org", "host.docker.internal", "gateway.docker.internal"):
    try:
        dns[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 443)})
    except OSError as exc:
        dns[name] = type(exc).__name__ + (": " + errname(exc.errno) if exc.errno else "")
try:
    with open("/proc/net/route") as f:
        routes = len(f.read().splitlines()) - 1  # minus the header
except OSError as exc:
    routes = errname(exc.errno)
report = {"tcp": tcp, "used": used, "udp": udp, "dns": dns, "routes": routes,
          "interfaces": sorted(name for _, name in socket.if_nameindex())}  # fmt: skip
print("ATTACK " + json.dumps(report), flush=True)
