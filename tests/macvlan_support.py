"""A simulated physical network for the cnm-macvlan tests: a "node" netns (the plugins run in
it, as the host) with a veth "uplink", whose other end sits in a "LAN" netns holding the
peer's address. Containers are further netns; their macvlans hang off the uplink."""

from __future__ import annotations

import json

from bridge_support import Lab, sh
from conftest import unique

SUBNET = "10.251.0.0/24"
PEER = "10.251.0.1"


class MacvlanLab(Lab):
    def __init__(self, netns_factory, env: dict, tmp_path, ipam_type: str = "cnm-ipam", uplinks: int = 1):
        super().__init__(netns_factory, env, tmp_path, ipam_type)
        self.network = unique("mvnet", 30)
        self.lan = netns_factory("cnml")
        self.uplinks = [self.add_uplink() for _ in range(uplinks)]
        self.master = self.uplinks[0]

    def add_uplink(self, peer: str = PEER, prefix: int = 24) -> str:
        """A veth: node end `up…` (up, the master), LAN end up with `peer`/`prefix`."""
        name, lan_end = unique("up"), unique("ln")
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", lan_end, ns=self.host)
        sh("ip", "link", "set", lan_end, "netns", self.lan, ns=self.host)
        sh("ip", "link", "set", name, "up", ns=self.host)
        sh("ip", "link", "set", lan_end, "up", ns=self.lan)
        sh("ip", "addr", "add", f"{peer}/{prefix}", "dev", lan_end, ns=self.lan)
        return name

    def conf(self, version: str = "1.0.0", ipam: dict | None = None, plugin: str = "cnm-macvlan", **keys) -> dict:
        conf = {"cniVersion": version, "name": self.network, "type": plugin, "master": self.master}
        conf["ipam"] = self.ipam(SUBNET, rangeStart="10.251.0.10") if ipam is None else ipam
        if not conf["ipam"]:
            del conf["ipam"]
        conf.update(keys)
        return conf

    def ipam(self, *ranges, **extra) -> dict:
        start = extra.pop("rangeStart", None)
        conf = super().ipam(*ranges, **extra)
        if start:
            conf["ranges"][0][0]["rangeStart"] = start
        return conf

    def macvlans(self, ns: str = "") -> list[str]:
        return [n for n, l in self.links(ns).items() if l.get("linkinfo", {}).get("info_kind") == "macvlan"]

    def neighbours(self) -> dict[str, str]:
        """The LAN peer's neighbour table: address -> MAC."""
        out = json.loads(sh("ip", "-j", "neigh", "show", ns=self.lan).stdout or "[]")
        return {n["dst"]: n.get("lladdr", "") for n in out}

    def assert_nothing_left(self, *containers: str):
        assert self.macvlans() == [], self.macvlans()
        for c in containers:
            assert self.macvlans(c) == [], (c, self.macvlans(c))
        assert self.leases() == [], self.leases()
        assert self.endpoints() == [], self.endpoints()


def address_of(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]
