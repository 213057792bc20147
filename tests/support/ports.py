"""Helpers for the published-port and isolation tests: an "outside" host routed to the lab's
host netns, bounded TCP/UDP echo servers in namespaces, and a bounded client.

The server answers every TCP connection / UDP datagram with "<tag> <peer address>", so a
test sees both who answered and the source address the server saw (masquerade or not).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.bridge import sh

UPLINK_V4, OUTSIDE_V4 = "192.0.2.1", "192.0.2.2"
UPLINK_V6, OUTSIDE_V6 = "2001:db8:5::1", "2001:db8:5::2"

SERVER = r"""
import select, socket, sys, time
tag, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
socks = []
for spec in sys.argv[3:]:
    proto, port = spec.split(":")
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", int(port)))
    if proto == "tcp":
        s.listen(16)
    socks.append((proto, s))
print("ready", flush=True)
while time.monotonic() < deadline:
    ready, _, _ = select.select([s for _, s in socks], [], [], 0.2)
    for proto, s in socks:
        if s not in ready:
            continue
        if proto == "tcp":
            conn, peer = s.accept()
            conn.sendall(f"{tag} {peer[0].removeprefix('::ffff:')}".encode())
            conn.close()
        else:
            data, peer = s.recvfrom(2048)
            s.sendto(f"{tag} {peer[0].removeprefix('::ffff:')}".encode(), peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if sport:
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
try:
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(256).decode())
    else:
        s.sendto(b"hi", (host, port))
        print(s.recvfrom(256)[0].decode())
except OSError as exc:
    print(f"ERR {exc}")
"""


class Servers:
    """Echo servers started in namespaces; all stopped at close()."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, ns: str, tag: str, *specs: str, lifetime: float = 60) -> None:
        argv = ["nsenter", f"--net={ns}", "--", sys.executable, "-c", SERVER, tag, str(lifetime), *specs]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def servers():
    """Echo servers for one test, stopped afterwards (import this fixture into a test module)."""
    s = Servers()
    yield s
    s.close()


def ask(ns: str, proto: str, host: str, port: int, sport: int = 0, tries: int = 1) -> str:
    """The server's answer ("<tag> <peer>") or "ERR ..." (bounded: 2 s per try). A first
    IPv6 contact may lose its first packet to neighbour discovery on the fresh bridge:
    tests expecting an answer allow a few tries."""
    for _ in range(tries):
        out = sh(sys.executable, "-c", CLIENT, proto, host, str(port), str(sport), ns=ns, check=False)
        answer = out.stdout.strip() or f"ERR {out.stderr.strip()[-200:]}"
        if not answer.startswith("ERR"):
            break
    return answer


def reach(ns: str, proto: str, host: str, port: int, sport: int = 0) -> str:
    """ask() for a test that expects an answer."""
    return ask(ns, proto, host, port, sport, tries=3)


def outside_host(lab) -> str:
    """A netns playing another machine: linked to the lab host by a veth, routed to it."""
    outside = lab.netns("cnmo")
    sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", outside, ns=lab.host)
    sh("ip", "addr", "add", f"{UPLINK_V4}/24", "dev", "up0", ns=lab.host)
    sh("ip", "addr", "add", f"{UPLINK_V6}/64", "dev", "up0", "nodad", ns=lab.host)
    sh("ip", "link", "set", "up0", "up", ns=lab.host)
    sh("ip", "link", "set", "lo", "up", ns=lab.host)
    sh("ip", "addr", "add", f"{OUTSIDE_V4}/24", "dev", "out0", ns=outside)
    sh("ip", "addr", "add", f"{OUTSIDE_V6}/64", "dev", "out0", "nodad", ns=outside)
    sh("ip", "link", "set", "out0", "up", ns=outside)
    sh("ip", "link", "set", "lo", "up", ns=outside)
    sh("ip", "route", "add", "default", "via", UPLINK_V4, ns=outside)
    sh("ip", "-6", "route", "add", "default", "via", UPLINK_V6, ns=outside)
    return outside


def nft_map_elements(lab, family: str = "inet") -> list[tuple[str, object, object, str]]:
    """(map, key, data, comment) of every element of our maps in the lab's host netns."""
    import json

    proc = sh("nft", "-j", "list", "table", family, "cnm", ns=lab.host, check=False)
    if proc.returncode != 0:
        return []
    out = []
    for item in json.loads(proc.stdout)["nftables"]:
        m = item.get("map")
        for key, data in (m or {}).get("elem", []):
            out.append((m["name"], key["elem"]["val"], data, key["elem"].get("comment", "")))
    return out
