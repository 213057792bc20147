"""A simulated node: what an operator sets up on a machine, made private to one test.

A Node has its own network namespace (its "host": the bridges, nftables tables and sysctls the
plugins make there are the test's), a CNI bin dir laid out as on a node (our plugin names linked
to bin/, `loopback` served by cnm-none, chosen Go plugins), a conf dir, a private CNM store and run
dir, an IPAM data dir and a libcni cache dir, all under one work dir. Runtimes (containerd with or
without its CRI, podman, cnitool, cnmctl, a CRI replay) are pointed at these. Its inspection
methods read the kernel and the files each part owns, so a test can assert that a removed container
left no veth, lease, nftables entry, pin, store record or libcni cache entry behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from support.common import unique

from .host import BIN, GO_PLUGINS, LIBCNI_DIR, OUR_TYPES, base_env, mounts_under, sh, unmount_under


@dataclass
class Network:
    """One conflist installed in a node's conf dir."""

    conflist: dict
    path: str

    @property
    def name(self) -> str:
        return self.conflist["name"]

    @property
    def bridge(self) -> str:
        return next((p["bridge"] for p in self.conflist.get("plugins") or [] if p.get("bridge")), "")

    @property
    def ipam(self) -> dict:
        return next((p["ipam"] for p in self.conflist.get("plugins") or [] if isinstance(p.get("ipam"), dict)), {})

    @property
    def subnet(self) -> str:
        return self.ipam["ranges"][0][0]["subnet"]

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"


CLEAN = {"bridge ports": [], "store": {"sandboxes": [], "endpoints": []}, "leases": [], "libcni cache": [],
         "pins": []}


class Node:
    def __init__(self, work: str, go_plugins: tuple[str, ...] = (), cache_dir: str = ""):
        """`cache_dir`: libcni's cache (default: private, under `work`; LIBCNI_DIR for a runtime that
        cannot move it, whose entries are then told apart by network name)."""
        self.work = str(work)
        self.bin_dir = os.path.join(self.work, "cni-bin")
        self.conf_dir = os.path.join(self.work, "cni-conf")
        self.state_dir = os.path.join(self.work, "cnm-state")
        self.run_dir = os.path.join(self.work, "cnm-run")
        self.data_dir = os.path.join(self.work, "ipam")
        self.cache_dir = cache_dir or os.path.join(self.work, "var-lib-cni")
        self.networks: list[Network] = []
        for d in (self.bin_dir, self.conf_dir):
            os.makedirs(d, exist_ok=True)
        for name in OUR_TYPES:
            os.symlink(os.path.join(BIN, name), os.path.join(self.bin_dir, name))
        os.symlink(os.path.join(BIN, "cnm-none"), os.path.join(self.bin_dir, "loopback"))
        for name in go_plugins:
            os.symlink(os.path.join(GO_PLUGINS, name), os.path.join(self.bin_dir, name))
        self.netns_name = unique("cnmh", 30)
        subprocess.run(["ip", "netns", "add", self.netns_name], check=True)
        self.host = f"/run/netns/{self.netns_name}"
        sh("ip", "link", "set", "lo", "up", ns=self.host)

    def add_uplink(self, lan: str = "", peer: str = "") -> str:
        """A "physical" link for cnm-macvlan: a veth whose node end (returned, up) is the master;
        its other end goes to netns `lan` with address `peer` (CIDR) when given."""
        name, other = unique("up"), unique("ln")
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", other, ns=self.host)
        if lan:
            sh("ip", "link", "set", other, "netns", lan, ns=self.host)
            sh("ip", "link", "set", other, "up", ns=lan)
            if peer:
                sh("ip", "addr", "add", peer, "dev", other, ns=lan)
        else:
            sh("ip", "link", "set", other, "up", ns=self.host)
        sh("ip", "link", "set", name, "up", ns=self.host)
        return name

    def env(self, **extra: str) -> dict[str, str]:
        """What a runtime hands the plugins of this node: its CNM store and run dir."""
        return base_env(CNM_STATE_DIR=self.state_dir, CNM_RUN_DIR=self.run_dir, **extra)

    def cnmctl(self, *args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
        """cnmctl as an operator runs it on the node: the node's CNI dirs and CNM store, its libcni
        cache, in the node's network namespace (`extra`: environment changes)."""
        env = self.env(NETCONFPATH=self.conf_dir, CNI_PATH=self.bin_dir, CNM_HELPER_SOCKET="off")
        if self.cache_dir != LIBCNI_DIR:
            env["CNI_CACHE_DIR"] = self.cache_dir
        env.update(extra)
        return sh(os.path.join(BIN, "cnmctl"), *args, ns=self.host, env=env, check=check, timeout=120)

    def add_network(self, conflist: dict, filename: str = "") -> Network:
        path = os.path.join(self.conf_dir, filename or f"{conflist['name']}.conflist")
        with open(path, "w") as f:
            json.dump(conflist, f, indent=2)
        net = Network(conflist, path)
        self.networks.append(net)
        return net

    def remove_network(self, net: Network) -> None:
        os.unlink(net.path)
        self.networks.remove(net)
        for path in self.cache_entries([net]):
            os.unlink(path)

    def cleanup(self) -> None:
        """Whatever a failed test left: sandbox pins, shared-cache entries of our networks, the netns."""
        unmount_under(self.run_dir)
        if self.cache_dir == LIBCNI_DIR:
            for path in self.cache_entries():
                os.unlink(path)
        subprocess.run(["ip", "netns", "del", self.netns_name], capture_output=True)

    # -- what the node's kernel and files say ------------------------------------------------

    def links(self) -> dict[str, dict]:
        out = sh("ip", "-j", "-d", "link", "show", ns=self.host).stdout
        return {link["ifname"]: link for link in json.loads(out or "[]")}

    def bridge_ports(self, bridge: str) -> list[str]:
        return sorted(name for name, link in self.links().items() if link.get("master") == bridge)

    def qdiscs(self, dev: str) -> list[dict]:
        return json.loads(sh("tc", "-j", "qdisc", "show", "dev", dev, ns=self.host).stdout or "[]")

    def nft_ruleset(self) -> str:
        return sh("nft", "-j", "list", "ruleset", ns=self.host).stdout

    def leases(self, net: Network | None = None) -> dict[str, str]:
        """IPAM leases on disk (host-local format) of `net` (default: the first network):
        address -> 'containerID ifname'."""
        net = net or self.networks[0]
        directory = os.path.join(net.ipam.get("dataDir") or self.data_dir, net.name)
        found = {}
        if os.path.isdir(directory):
            for name in os.listdir(directory):
                if name == "lock" or name.startswith("last_reserved_ip"):
                    continue
                with open(os.path.join(directory, name)) as f:
                    found[name] = " ".join(f.read().split())
        return found

    def store(self) -> tuple[list, list]:
        """(sandboxes, endpoints) in our CNM store."""
        from cni_plugins.cnm.store import Store

        if not os.path.isdir(self.state_dir):
            return [], []
        with Store(self.state_dir).transaction(write=False) as tx:
            return tx.list_sandboxes(), tx.list_endpoints()

    def pins(self) -> list[str]:
        """Our sandbox pins (bind mounts of netns) still mounted."""
        return mounts_under(self.run_dir)

    def cache_entries(self, networks: list[Network] | None = None) -> list[str]:
        """libcni cache files (results/<network>-<id>-<ifname>): all of a private cache; of a shared
        one, those of this node's networks (or of `networks`)."""
        results = os.path.join(self.cache_dir, "results")
        names = sorted(os.listdir(results)) if os.path.isdir(results) else []
        if self.cache_dir == LIBCNI_DIR or networks is not None:
            prefixes = tuple(f"{n.name}-" for n in (self.networks if networks is None else networks))
            names = [n for n in names if n.startswith(prefixes)]
        return [os.path.join(results, n) for n in names]

    def leftovers(self, *networks: Network) -> dict:
        """Everything an attachment makes, of `networks` (default: all of the node's), gathered for one
        assertion: `== CLEAN` when nothing is left."""
        nets = list(networks) or self.networks
        sandboxes, endpoints = self.store()
        return {
            "bridge ports": sorted(p for n in nets if n.bridge for p in self.bridge_ports(n.bridge)),
            "store": {"sandboxes": [s.id for s in sandboxes], "endpoints": [e.id for e in endpoints]},
            "leases": sorted(address for n in nets for address in self.leases(n)),
            "libcni cache": [os.path.basename(p) for p in self.cache_entries(nets if networks else None)],
            "pins": self.pins(),
        }
