"""Helpers for the name-server tests: a resident helper (cnmd) of the test's own, running in
the test's throwaway host netns (bridge_support.Lab), queries sent from inside a container's
netns with dnspython, and a tiny upstream resolver served from a test netns."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

from bridge_support import Lab
from conftest import BIN, in_netns, wait_listening


class DnsLab(Lab):
    """A Lab whose plugin execs go through a helper started in its host netns."""

    def __init__(self, netns_factory, env: dict, tmp_path, v4: str, v6: str | None = None):
        super().__init__(netns_factory, env, tmp_path)
        self.v4, self.v6 = v4, v6
        self.helper = None
        self.sock = str(tmp_path / "cnmd.sock")
        self.env = dict(env, CNM_HELPER_SOCKET=self.sock)

    def start_helper(self) -> None:
        self.log = open(self.tmp / "cnmd.log", "ab")
        self.helper = subprocess.Popen(["nsenter", f"--net={self.host}", "--", os.path.join(BIN, "cnmd"),
                                        "--socket", self.sock], env=self.env, stdout=self.log, stderr=self.log)
        wait_listening(self.sock, self.helper, log=str(self.tmp / "cnmd.log"))
        # Its socket takes connections a moment before its SIGTERM handler is in place: a test
        # that stops it at once must wait for that too (its log line says so).
        ready = f"cnmd[{self.helper.pid}]: serving on"
        while ready not in (self.tmp / "cnmd.log").read_text():
            assert self.helper.poll() is None, (self.tmp / "cnmd.log").read_text()
            time.sleep(0.02)

    def stop_helper(self) -> None:
        if self.helper is not None:
            self.helper.terminate()
            assert self.helper.wait(timeout=60) == 0
            self.helper = None
            self.log.close()

    def dns_conf(self, **keys) -> dict:
        ranges = [self.v4] + ([self.v6] if self.v6 else [])
        return self.conf(isGateway=True, dnsEnabled=True, ipam=self.ipam(*ranges), **keys)

    def gateway(self, family: int = 4) -> str:
        import ipaddress

        subnet = ipaddress.ip_network(self.v4 if family == 4 else self.v6)
        return str(subnet.network_address + 1)


def aliases(conf: dict, *names: str) -> dict:
    """The config as podman sends it with the `aliases` capability."""
    return dict(conf, runtimeConfig={"aliases": {conf["name"]: list(names)}})


def query(ns: str, server: str, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 10.0,
          payload: int | None = None) -> dns.message.Message:
    """One query from inside netns `ns`."""
    msg = dns.message.make_query(name, rdtype, use_edns=payload is not None, payload=payload or 1232)
    if tcp:
        return in_netns(ns, lambda: dns.query.tcp(msg, server, timeout=timeout))
    return in_netns(ns, lambda: dns.query.udp(msg, server, timeout=timeout, raise_on_truncation=False))


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


def resolve(ns: str, server: str, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    reply = query(ns, server, name, rdtype)
    return dns.rcode.to_text(reply.rcode()), addresses(reply)


class Upstream:
    """A tiny DNS server inside netns `ns` on `address`:53/udp: `outside.example.` is 192.0.2.7,
    `silent.example.` is never answered, everything else is NXDOMAIN."""

    ANSWER = "192.0.2.7"

    def __init__(self, ns: str, address: str):
        self.ns, self.address = ns, address
        self.seen: list[str] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        from cni_plugins.linux import netns as nsmod

        fd = nsmod.open_netns(self.ns)
        nsmod.setns(fd)
        os.close(fd)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.address, 53))
        sock.settimeout(0.2)
        self._ready.set()
        with sock:
            while not self._stop.is_set():
                try:
                    wire, peer = sock.recvfrom(65535)
                except socket.timeout:
                    continue
                q = dns.message.from_wire(wire)
                name = q.question[0].name.to_text()
                self.seen.append(name)
                if name == "silent.example.":
                    continue
                reply = dns.message.make_response(q)
                if name == "outside.example." and q.question[0].rdtype == dns.rdatatype.A:
                    reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", self.ANSWER))
                else:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                sock.sendto(reply.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

