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
