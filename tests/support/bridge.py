"""Helpers for the cnm-bridge tests: a throwaway "host" netns per test in which the plugins
run (so bridges, nftables, sysctls and iptables are the test's own), container netns,
configs, and kernel probes through `ip -j`, `nft -j` and pyroute2-free subprocess calls.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

from support.common import GO_PLUGINS, exec_plugin, unique


def sh(*argv: str, ns: str = "", check: bool = True) -> subprocess.CompletedProcess:
    cmd = list(argv)
    if ns:
        cmd = ["nsenter", f"--net={ns}", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


def delete_nft_element(host: str, family: str, name: str, element: str) -> None:
    """Delete one element of our table by hand, for good.

    Through the resident helper, its firewall watch may still have a restore pending from the
    structural change the test's first ADD made (the table created: debounced, at most
    MAX_DELAY_S later). Element deletions do not wake it, so once that restore is past the
    element stays deleted: delete until a second later there is nothing left to delete."""
    sh("nft", "delete", "element", family, "cnm", name, "{", element, "}", ns=host)
    if not os.environ.get("CNM_TEST_HELPER"):
        return
    for _ in range(20):
        time.sleep(1.0)
        again = sh("nft", "delete", "element", family, "cnm", name, "{", element, "}", ns=host, check=False)
        if again.returncode != 0:
            return
    raise AssertionError(f"{family} cnm {name} {element} keeps coming back")


class Lab:
    """One test's world: a host netns, container netns made on demand, private IPAM/state dirs."""

    def __init__(self, netns_factory, env: dict, tmp_path, ipam_type: str = "host-local"):
        self.netns = netns_factory
        self.env = env
        self.host = netns_factory("cnmh")
        self.tmp = tmp_path
        self.network = unique("brnet", 30)
        self.bridge = unique("cnb")
        self.ipam_type = ipam_type
        self.data_dir = str(tmp_path / "ipam")

    # ---- configs ------------------------------------------------------------------------
    def ipam(self, *ranges: str, **extra) -> dict:
        ranges = ranges or ("10.250.0.0/24",)
        conf = {
            "type": self.ipam_type,
            "dataDir": self.data_dir,
            "ranges": [[{"subnet": r} if isinstance(r, str) else r] for r in ranges],
        }
        conf.update(extra)
        return conf

    def conf(self, version: str = "1.0.0", ipam: dict | None = None, plugin: str = "cnm-bridge", **keys) -> dict:
        conf = {"cniVersion": version, "name": self.network, "type": plugin, "bridge": self.bridge}
        conf["ipam"] = self.ipam() if ipam is None else ipam
        if not conf["ipam"]:
            del conf["ipam"]
        conf.update(keys)
        return conf

    def container(self) -> str:
        return self.netns("cnmc")

    # ---- plugin execution ---------------------------------------------------------------
    def run(self, command: str, conf, netns: str = "", cid: str = "c1", ifname: str = "eth0", plugin: str = "",
            args: str = "", directory: str | None = None):
        plugin = plugin or (conf.get("type") if isinstance(conf, dict) else "cnm-bridge")
        kw = {"directory": directory} if directory else {}
        return exec_plugin(plugin, command, conf, self.env, container_id=cid, netns=netns, ifname=ifname,
                           args=args, host_netns=self.host, **kw)

    def add(self, conf, netns, cid="c1", ifname="eth0", **kw):
        run = self.run("ADD", conf, netns, cid, ifname, **kw)
        assert run.rc == 0, run
        return run.json

    def run_go(self, command: str, conf, netns: str = "", cid: str = "c1", ifname: str = "eth0", args: str = ""):
        return self.run(command, conf, netns, cid, ifname, plugin=conf["type"], args=args, directory=GO_PLUGINS)

    # ---- kernel probes ------------------------------------------------------------------
    def links(self, ns: str = "") -> dict:
        out = sh("ip", "-d", "-j", "link", "show", ns=ns or self.host).stdout
        return {link["ifname"]: link for link in json.loads(out or "[]")}

    def link(self, name: str, ns: str = ""):
        return self.links(ns).get(name)

    def addrs(self, name: str, ns: str) -> list[str]:
        out = json.loads(sh("ip", "-j", "addr", "show", "dev", name, ns=ns).stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"] if a.get("scope") != "link"]

    def routes(self, ns: str, family: str = "-4") -> list[dict]:
        return json.loads(sh("ip", family, "-j", "route", "show", ns=ns).stdout or "[]")

    def veths(self) -> list[str]:
        return [n for n, l in self.links().items() if l.get("linkinfo", {}).get("info_kind") == "veth"]

    def nft_elements(self) -> list[tuple[str, str, object, str]]:
        """(family, set, value, comment) of every element of our tables in the host netns."""
        out = []
        for family in ("inet", "bridge"):
            proc = sh("nft", "-j", "list", "table", family, "cnm", ns=self.host, check=False)
            if proc.returncode != 0:
                continue
            for item in json.loads(proc.stdout)["nftables"]:
                s = item.get("set")
                for e in (s or {}).get("elem", []):
                    if isinstance(e, dict) and "elem" in e:
                        out.append((family, s["name"], e["elem"]["val"], e["elem"].get("comment", "")))
                    elif s:
                        out.append((family, s["name"], e, ""))
        return out

    def sysctl(self, key: str, ns: str = "") -> str:
        """A sysctl as seen from netns `ns` (dotted key; /proc/sys/net follows the reader's netns)."""
        return sh("cat", "/proc/sys/" + key.replace(".", "/"), ns=ns or self.host).stdout.strip()

    def ping(self, ns: str, address: str, count: int = 1) -> bool:
        flag = "-6" if ":" in address else "-4"
        return sh("ping", flag, "-c", str(count), "-W", "2", address, ns=ns, check=False).returncode == 0

    def leases(self) -> list[str]:
        d = os.path.join(self.data_dir, self.network)
        if not os.path.isdir(d):
            return []
        return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved_ip"))

    def endpoints(self) -> list[tuple]:
        db = os.path.join(self.env["CNM_STATE_DIR"], "cnm.db")
        if not os.path.exists(db):
            return []
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT id, container_id, ifname FROM endpoints").fetchall()

    def assert_nothing_left(self):
        assert self.veths() == [], self.veths()
        assert self.leases() == [], self.leases()
        assert self.endpoints() == [], self.endpoints()
        assert self.nft_elements() == [], self.nft_elements()


def store_rows(env, table: str) -> list:
    """Every row of `table` in the store of env's CNM_STATE_DIR ([] when there is no store)."""
    db = os.path.join(env["CNM_STATE_DIR"], "cnm.db")
    if not os.path.exists(db):
        return []
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


def with_prev(conf: dict, prev: dict) -> dict:
    out = dict(conf)
    out["prevResult"] = prev
    return out
