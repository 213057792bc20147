#!/usr/bin/env python3
"""Names on a network (issue 14 item 7): our name server (cnmd, cnm-bridge `dnsEnabled`) against
the reference `dnsname` CNI plugin (dnsmasq per network, chained after the Go bridge and
host-local) and aardvark-dns 1.4 driven standalone, in one run, same client.

    .venv/bin/python bench/names.py [--queries 2000] [--runs 15] [--names 1000] [--out FILE]

Everything runs in a throwaway "host" netns: this process setns()es into it, so the plugin
execs, our helper (started there), dnsmasq and aardvark-dns live there. Measured:
  - query latency (median, p99) and queries per second: one client in a container, sequential
    UDP A queries of another container's name (dnspython, the same client code for all);
  - the same for our server on a network holding 1,000 names vs one holding 10 (the extra
    names are endpoint records written into the store as an ADD writes them; the queried
    name is a real container's), in alternating rounds;
  - the ADD cost: cnm-bridge + host-local with names on vs off (through the helper, warm),
    and the Go bridge + host-local + dnsname chain, alternating, a fresh netns per ADD.
Prints markdown with the targets next to each ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dns.message  # noqa: E402
import dns.query  # noqa: E402

from cni_plugins.cnm.model import READY, Endpoint, endpoint_id  # noqa: E402
from cni_plugins.cnm.store import Store  # noqa: E402
from cni_plugins.linux import netns as nsmod  # noqa: E402
from cni_plugins.runtime.conf import conflist_from_bytes  # noqa: E402
from cni_plugins.runtime.libcni import CNIRunner, RuntimeConf  # noqa: E402

BIN = os.path.join(ROOT, "bin")
GO = "/usr/lib/cni"
AARDVARK = shutil.which("aardvark-dns") or "/usr/lib/podman/aardvark-dns"
AARDVARK_PORT = 5533


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def ours(name: str, bridge: str, subnet: str, data_dir: str, names: bool, ipam: str = "host-local") -> dict:
    plugin = {"type": "cnm-bridge", "bridge": bridge, "isGateway": True,
              "ipam": {"type": ipam, "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]},
              "capabilities": {"aliases": True}}
    if names:
        plugin.update(dnsEnabled=True, dnsDomain=f"{name}.test", dnsUpstreams=[])
    return {"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}


def reference(name: str, bridge: str, subnet: str, data_dir: str) -> dict:
    return {"cniVersion": "0.4.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]]}},
        {"type": "dnsname", "domainName": f"{name}.test", "capabilities": {"aliases": True}},
    ]}


class World:
    def __init__(self, work: str):
        self.work = work
        self.host_name = "cnmbdns" + uuid.uuid4().hex[:8]
        sh("ip", "netns", "add", self.host_name)
        self.host = f"/run/netns/{self.host_name}"
        sh("ip", "netns", "exec", self.host_name, "ip", "link", "set", "lo", "up")
        self.made: list[str] = []
        self.sock = os.path.join(work, "cnmd.sock")
        self.env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "CNM_STATE_DIR": os.path.join(work, "state"), "CNM_RUN_DIR": os.path.join(work, "run"),
                    "CNM_HELPER_SOCKET": self.sock, "CNM_LOG_FILE": os.path.join(work, "cnm.log")}
        self.log = open(os.path.join(work, "cnmd.log"), "wb")
        self.helper = subprocess.Popen(["nsenter", f"--net={self.host}", "--", os.path.join(BIN, "cnmd"),
                                        "--socket", self.sock], env=self.env, stdout=self.log, stderr=self.log)
        while f"cnmd[{self.helper.pid}]: serving on" not in open(os.path.join(work, "cnmd.log")).read():
            assert self.helper.poll() is None, open(os.path.join(work, "cnmd.log")).read()
            time.sleep(0.05)
        fd = nsmod.open_netns(self.host)
        nsmod.setns(fd)  # this process (its main thread: the execs) plays in the host netns
        os.close(fd)
        self.runner = CNIRunner([BIN, GO], os.path.join(work, "cache"), env=dict(os.environ, **self.env))

    def netns(self) -> str:
        name = "cnmbc" + uuid.uuid4().hex[:10]
        sh("ip", "netns", "add", name)
        self.made.append(name)
        return f"/run/netns/{name}"

    def add(self, conflist: dict, netns: str, cid: str, name: str = "") -> dict:
        net = conflist_from_bytes(json.dumps(conflist).encode())
        args = [("IgnoreUnknown", "1"), ("K8S_POD_NAME", name)] if name else []
        caps = {"aliases": {conflist["name"]: [name]}} if name else {}
        return self.runner.add_network_list(net, RuntimeConf(cid, netns, "eth0", args, caps))

    def delete(self, conflist: dict, netns: str, cid: str, name: str = "") -> None:
        net = conflist_from_bytes(json.dumps(conflist).encode())
        args = [("IgnoreUnknown", "1"), ("K8S_POD_NAME", name)] if name else []
        caps = {"aliases": {conflist["name"]: [name]}} if name else {}
        self.runner.del_network_list(net, RuntimeConf(cid, netns, "eth0", args, caps))

    def close(self) -> None:
        self.helper.terminate()
        self.helper.wait(timeout=60)
        for name in self.made:
            sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "del", self.host_name, check=False)


def in_netns(path: str, fn, *args):
    box = {}

    def target():
        fd = nsmod.open_netns(path)
        nsmod.setns(fd)
        os.close(fd)
        box["v"] = fn(*args)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    return box["v"]


def latencies(client_ns: str, server: str, qname: str, count: int, port: int = 53) -> tuple[list[float], float]:
    """Per-query seconds and the wall time of `count` sequential queries (after 100 warm-up)."""
    def run():
        wire = dns.message.make_query(qname, "A")
        for _ in range(100):
            reply = dns.query.udp(wire, server, port=port, timeout=5)
            assert reply.answer, (server, port, qname, reply)
        out = []
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            dns.query.udp(wire, server, port=port, timeout=5)
            out.append(time.perf_counter() - t0)
        return out, time.perf_counter() - start

    return in_netns(client_ns, run)


def fill_names(world: World, network: str, subnet_prefix: str, count: int) -> None:
    """`count` endpoint records with names, as an ADD records them (no kernel objects: the
    server reads only the store)."""
    store = Store(world.env["CNM_STATE_DIR"])
    with store.transaction() as tx:
        sample = next(e for e in tx.list_endpoints(network=network) if e.data.get("dns"))
        for i in range(count):
            cid = f"fill{i}"
            ep = Endpoint(endpoint_id(network, cid, "eth0"), network, sample.sandbox, cid, "eth0", "bridge",
                          phase=READY, data={"dns": {"names": [f"fill{i}"],
                                                     "addresses": [f"{subnet_prefix}.{i // 250 + 100}.{i % 250 + 2}"],
                                                     "listen": sample.data["dns"]["listen"]}})
            tx.put_endpoint(ep)


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--out", default="")
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cnm-bench-dns-")
    world = World(work)
    lines = []
    aardvark = None
    try:
        data = os.path.join(work, "ipam")
        mine = ours("bdnsours", "cbdo", "10.93.0.0/16", data, True)
        big = ours("bdnsbig", "cbdb", "10.96.0.0/16", data, True)
        ref = reference("bdnsref" + uuid.uuid4().hex[:6], "cbdr", "10.94.0.0/24", data)
        c_ours, t_ours, c_big, t_big, c_ref, t_ref = (world.netns() for _ in range(6))
        world.add(mine, t_ours, "t-ours", "target")
        world.add(mine, c_ours, "c-ours", "client")
        world.add(big, t_big, "t-big", "target")
        world.add(big, c_big, "c-big", "client")
        fill_names(world, "bdnsours", "10.93", 8)  # 10 names
        fill_names(world, "bdnsbig", "10.96", opts.names - 2)
        t_ref_ip = world.add(ref, t_ref, "t-ref", "target")["ips"][0]["address"].split("/")[0]
        world.add(ref, c_ref, "c-ref", "client")

        # aardvark-dns 1.4 standalone: its config dir holds one file per network (listen address,
        # then one line per container: id, IPv4s, IPv6s, names), on the reference bridge.
        adir = os.path.join(work, "aardvark")
        os.makedirs(adir)
        with open(os.path.join(adir, "bench"), "w") as f:
            f.write("10.94.0.1\n")
            f.write(f"{'a' * 64} {t_ref_ip}  target\n")
        aardvark = subprocess.Popen([AARDVARK, "--config", adir, "-p", str(AARDVARK_PORT), "run"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

        # ---- query latency --------------------------------------------------------------------
        results = {}
        rounds = 4
        per = opts.queries // rounds
        targets = {
            "cnm (cnmd), 10 names": (c_ours, "10.93.0.1", "target.bdnsours.test.", 53),
            f"cnm (cnmd), {opts.names} names": (c_big, "10.96.0.1", "target.bdnsbig.test.", 53),
            "dnsname (dnsmasq)": (c_ref, "10.94.0.1", f"target.{ref['name']}.test.", 53),
            "aardvark-dns 1.4": (c_ref, "10.94.0.1", "target.", AARDVARK_PORT),
        }
        for _ in range(rounds):  # alternating: load from elsewhere hits all alike
            for label, (ns, server, qname, port) in targets.items():
                try:
                    samples, wall = latencies(ns, server, qname, per, port)
                except Exception as exc:  # noqa: BLE001 -- e.g. aardvark not answering
                    results.setdefault(label, ([], 0.0, f"{type(exc).__name__}: {exc}"))
                    continue
                prev = results.get(label, ([], 0.0, ""))
                results[label] = (prev[0] + samples, prev[1] + wall, prev[2])
        lines.append(f"### Query latency, one client in a container, sequential UDP A queries ({opts.queries} each)\n")
        lines.append("| server | median (µs) | p99 (µs) | queries/s |")
        lines.append("|---|---|---|---|")
        medians = {}
        for label, (samples, wall, error) in results.items():
            if not samples:
                lines.append(f"| {label} | - | - | {error} |")
                continue
            med, p99 = stats(samples)
            medians[label] = med
            lines.append(f"| {label} | {med * 1e6:.0f} | {p99 * 1e6:.0f} | {len(samples) / wall:.0f} |")
        ours10 = medians.get("cnm (cnmd), 10 names")
        ours_big = medians.get(f"cnm (cnmd), {opts.names} names")
        dnsmasq = medians.get("dnsname (dnsmasq)")
        if ours10 and dnsmasq:
            lines.append(f"\ncnm / dnsname median: {ours10 / dnsmasq:.2f}x (target <= 1.0)")
        if ours10 and ours_big:
            lines.append(f"cnm {opts.names} names / 10 names median: {ours_big / ours10:.2f}x (target <= 1.2)")

        # ---- ADD cost -------------------------------------------------------------------------
        off = ours("bdnsoff", "cbdf", "10.97.0.0/16", data, False)
        own_ipam = ours("bdnsown", "cbdi", "10.98.0.0/16", data, True, ipam="cnm-ipam")
        variants = {"cnm-bridge + host-local, names off": off,
                    "cnm-bridge + host-local, names on": mine,
                    "cnm-bridge + cnm-ipam, names on": own_ipam,
                    "Go bridge + host-local + dnsname": ref}
        costs = {label: [] for label in variants}
        for run in range(opts.runs + 1):
            for label, conflist in variants.items():
                ns = world.netns()
                cid = f"add{run}-{conflist['name']}"
                t0 = time.perf_counter()
                world.add(conflist, ns, cid, f"n{run}")
                elapsed = time.perf_counter() - t0
                world.delete(conflist, ns, cid, f"n{run}")
                if run:  # the first round warms caches, bridges and servers
                    costs[label].append(elapsed)
        lines.append(f"\n### ADD cost, fresh netns each, through the helper ({opts.runs} runs each, alternating)\n")
        lines.append("| chain | median (ms) | p95 (ms) |")
        lines.append("|---|---|---|")
        med = {}
        for label, samples in costs.items():
            ordered = sorted(samples)
            med[label] = statistics.median(ordered)
            p95 = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.95) - 1)]
            lines.append(f"| {label} | {med[label] * 1e3:.1f} | {p95 * 1e3:.1f} |")
        on, offv, go = (med["cnm-bridge + host-local, names on"], med["cnm-bridge + host-local, names off"],
                        med["Go bridge + host-local + dnsname"])
        own = med["cnm-bridge + cnm-ipam, names on"]
        lines.append(f"\nnames on / off: {on / offv:.2f}x (target <= 1.1); names on / Go chain: "
                     f"{on / go:.2f}x with host-local, {own / go:.2f}x with cnm-ipam (target <= 0.5)")
    finally:
        if aardvark is not None:
            aardvark.terminate()
            aardvark.wait(timeout=10)
            _stop_aardvark(os.path.join(work, "aardvark"))
        for pidfile in _dnsmasq_pidfiles():
            _stop_dnsmasq(pidfile)
        world.close()
        with open("/proc/self/mountinfo") as f:  # the store's pins of the setup's containers
            points = [line.split()[4] for line in f if line.split()[4].startswith(work + "/")]
        for point in sorted(points, reverse=True):
            sh("umount", "-l", point, check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
    return 0


def _stop_aardvark(config_dir: str) -> None:
    """aardvark-dns `run` forks into the background: its pid is in the config dir."""
    try:
        with open(os.path.join(config_dir, "aardvark.pid")) as f:
            os.kill(int(f.read().strip()), 15)
    except (OSError, ValueError):
        pass


def _dnsmasq_pidfiles() -> list[str]:
    base = "/run/containers/cni/dnsname"
    found = []
    if os.path.isdir(base):
        for name in os.listdir(base):
            if name.startswith("bdnsref"):
                path = os.path.join(base, name, "pidfile")
                if os.path.exists(path):
                    found.append(path)
    return found


def _stop_dnsmasq(pidfile: str) -> None:
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, 15)
    except (OSError, ValueError):
        pass
    shutil.rmtree(os.path.dirname(pidfile), ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
