"""Attack: raw and packet sockets (sniff or forge traffic), and netlink to build a network of its own.

Opens AF_PACKET (SOCK_RAW and SOCK_DGRAM) and SOCK_RAW sockets for ICMP, TCP, UDP and IPPROTO_RAW
(IPv4 and IPv6); where one opens it sends a hand-made ICMP echo to a public address. Over
rtnetlink it asks the kernel to add an address to `lo`, a default route and a veth pair (each needs
CAP_NET_ADMIN). If raw sockets were allowed the candidate could forge packets that no socket rule
sees; with CAP_NET_ADMIN it could give itself an interface and a route out.

Prints `ATTACK {"sockets": {kind: "opened" | errno}, "sent": {...}, "netlink": {request: errno}}` and
exits 0 without a model. Expected: crash; no raw or packet socket opens (EPERM; gVisor may say
EAFNOSUPPORT or ESOCKTNOSUPPORT), every netlink change refused (EPERM), nothing sent.
"""

import errno
import json
import os
import socket
import struct

AF_PACKET = getattr(socket, "AF_PACKET", 17)
ETH_P_ALL = 0x0003


def errname(err):
    return errno.errorcode.get(err, str(err)) if err else "unknown"


def icmp_echo():
    header = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, 1)
    payload = b"attack"
    total = sum(struct.unpack(f"!{len(header + payload) // 2}H", header + payload))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    return struct.pack("!BBHHH", 8, 0, checksum, os.getpid() & 0xFFFF, 1) + payload


sockets, sent = {}, {}
for name, family, kind, proto in (
    ("packet_raw", AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)),
    ("packet_dgram", AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)),
    ("inet_raw_icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("inet_raw_tcp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    ("inet_raw_udp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
    ("inet_raw_raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
    ("inet6_raw_icmp", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
):
    try:
        s = socket.socket(family, kind, proto)
    except OSError as exc:
        sockets[name] = errname(exc.errno)
        continue
    sockets[name] = "opened"
    if family == socket.AF_INET and proto == socket.IPPROTO_ICMP:
        try:
            s.sendto(icmp_echo(), ("8.8.8.8", 0))
            sent[name] = "sent"
        except OSError as exc:
            sent[name] = errname(exc.errno)
    s.close()

# rtnetlink: each request is a struct nlmsghdr + its payload, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE.
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
FLAGS = 0x1 | 0x4 | 0x400 | 0x200  # REQUEST | ACK | CREATE | EXCL


def attr(kind, data):
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def ask(sock, msg_type, body, seq):
    msg = struct.pack("=IHHII", 16 + len(body), msg_type, FLAGS, seq, 0) + body
    sock.send(msg)
    reply = sock.recv(65536)
    code = struct.unpack("=i", reply[16:20])[0] if len(reply) >= 20 else None
    return "ok" if code == 0 else errname(-code) if code is not None else "no reply"


netlink = {}
try:
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    nl.bind((0, 0))
    netlink["socket"] = "opened"
    lo = socket.if_nametoindex("lo")
    addr = struct.pack("=BBBBI", socket.AF_INET, 8, 0, 0, lo) + attr(2, socket.inet_aton("10.66.0.1"))
    netlink["add_address_to_lo"] = ask(nl, RTM_NEWADDR, addr, 1)
    route = struct.pack(
        "=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0
    )  # main, boot, universe, unicast
    route += attr(4, struct.pack("=I", lo))  # RTA_OIF
    netlink["add_default_route"] = ask(nl, RTM_NEWROUTE, route, 2)
    info = attr(1, b"veth\0")  # IFLA_INFO_KIND
    link = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + attr(3, b"attack0\0") + attr(18, info)
    netlink["add_veth"] = ask(nl, RTM_NEWLINK, link, 3)
    nl.close()
except OSError as exc:
    netlink.setdefault("socket", errname(exc.errno))
    netlink["error"] = f"{type(exc).__name__}: {exc}"
interfaces = sorted(name for _, name in socket.if_nameindex())
print("ATTACK " + json.dumps({"sockets": sockets, "sent": sent, "netlink": netlink, "interfaces": interfaces}),
      flush=True)  # fmt: skip
