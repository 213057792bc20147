"""The routes of the network namespace this process runs in, read from /proc/net.

Stdlib only (no pyroute2 import on the IPAM path): /proc/net/route lists the
main IPv4 table, /proc/net/ipv6_route the IPv6 FIB.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Union

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _ipv4_routes(path: str) -> list[Net]:
    out: list[Net] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            # The kernel prints the raw __be32 as a host-order integer.
            dst = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, sys.byteorder))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, sys.byteorder))
            out.append(ipaddress.IPv4Network(f"{dst}/{mask}", strict=False))
        except ValueError:
            continue
    return out


def _ipv6_routes(path: str) -> list[Net]:
    out: list[Net] = []
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            dst = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            out.append(ipaddress.IPv6Network(f"{dst}/{int(fields[1], 16)}", strict=False))
        except ValueError:
            continue
    return out


def route_destinations(proc: str = "") -> list[Net]:
    """Destination prefixes of every route of this thread's netns, default routes included."""
    proc = proc or ("/proc/thread-self/net" if os.path.exists("/proc/thread-self/net") else "/proc/self/net")
    return _ipv4_routes(f"{proc}/route") + _ipv6_routes(f"{proc}/ipv6_route")


def udp_listeners(port: int, proc: str = "") -> set[str]:
    """The addresses UDP sockets of this thread's netns are bound to on `port` (any process)."""
    proc = proc or ("/proc/thread-self/net" if os.path.exists("/proc/thread-self/net") else "/proc/self/net")
    found: set[str] = set()
    for name, size in (("udp", 4), ("udp6", 16)):
        try:
            with open(f"{proc}/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 2 or ":" not in fields[1]:
                continue
            hex_addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or len(hex_addr) != size * 2:
                continue
            # The kernel prints each 32-bit word of the address in host order.
            raw = b"".join(int(hex_addr[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hex_addr), 8))
            found.add(str(ipaddress.ip_address(raw)))
    return found
