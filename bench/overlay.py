#!/usr/bin/env python3
"""cnm-overlay measured on simulated nodes (the tests' underlay and etcd: tests/support/overlay.py,
tests/support/etcd.py), as root:

    .venv/bin/python bench/overlay.py [--iterations N] [--rounds N] [--quick] [--out FILE]

  1. ADD/DEL through each node's helper: cnm-overlay vs cnm-bridge on the same node, interleaved
     (target ≤ 1.1×: a leased node asks etcd nothing);
  2. convergence: from a new node's first ADD returning to its route on the others (p95 ≤ 1 s),
     and from a node's lease revoked to its route withdrawn;
  3. with 200 node records in etcd vs 3: an ADD, and the helper's programming of a joining
     node (its record put → routed by the others; target ≤ 1.2×); reported: a new node's ADD
     done → routed (the others have routed it before its ADD returns: this is the cost of one
     poll of each, beside the new node's own start-up converge) and a converge from a fresh list;
  4. pod-to-pod TCP throughput across the overlay vs the same two pods' kind on one bridge.
Medians and p95 in ms; the result is printed and written to --out (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from support.common import NetnsFactory, exec_plugin, unique  # noqa: E402
from support.etcd import Cluster  # noqa: E402
from support.overlay import World, mesh_of, sh, start_helper, stop_helper  # noqa: E402


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))] if xs else float("nan")


def ms(x):
    return f"{x * 1000:.1f}"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bridge_conf(node, name, bridge, subnet):
    return {"cniVersion": "1.1.0", "name": name, "type": "cnm-bridge", "bridge": bridge, "isGateway": True,
            "ipam": {"type": "cnm-ipam", "dataDir": str(node.dir / "bripam"), "ranges": [[{"subnet": subnet}]]}}


def add_del(node, conf, pods: int, netns) -> tuple[list[float], list[float]]:
    adds, dels = [], []
    for i in range(pods):
        ns = netns("cnmp")
        cid = unique("b", 30)
        t, run = timed(lambda: exec_plugin(conf["type"], "ADD", conf, node.env, container_id=cid, netns=ns,
                                           ifname="eth0", host_netns=node.host))
        assert run.rc == 0, run
        adds.append(t)
        t, run = timed(lambda: exec_plugin(conf["type"], "DEL", conf, node.env, container_id=cid, netns=ns,
                                           ifname="eth0", host_netns=node.host))
        assert run.rc == 0, run
        dels.append(t)
    return adds, dels


def lifecycle_rows(world, netns, iterations) -> list[str]:
    node = world.nodes[0]
    overlay = node.conf()
    bridge = bridge_conf(node, unique("brn", 30), unique("cnb"), "10.77.0.0/24")
    add_del(node, overlay, 2, netns)
    add_del(node, bridge, 2, netns)
    o_add, o_del, b_add, b_del = [], [], [], []
    for _ in range(iterations):  # interleaved: the machine's noise falls on both
        a, d = add_del(node, overlay, 1, netns)
        o_add += a
        o_del += d
        a, d = add_del(node, bridge, 1, netns)
        b_add += a
        b_del += d
    rows = ["| command | cnm-bridge median (p95) | cnm-overlay median (p95) | ratio | target |", "|---|---|---|---|---|"]
    for cmd, b, o in (("ADD", b_add, o_add), ("DEL", b_del, o_del)):
        r = median(o) / median(b)
        rows.append(f"| {cmd} | {ms(median(b))} ({ms(p95(b))}) | {ms(median(o))} ({ms(p95(o))}) | {r:.2f}× | "
                    f"≤ 1.1× {'ok' if r <= 1.1 else 'MISSED'} |")
    return rows


def wait(predicate, timeout=30.0, step=0.002):
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError
        time.sleep(step)


def routed(node, subnet: str) -> bool:
    """The kernel of `node` routes `subnet` into the overlay: one FIB lookup of its gateway
    address (`ip route get`: its cost does not grow with the mesh, unlike `ip route show`,
    which filters a dump of the whole table)."""
    from cni_plugins.drivers.overlay.mesh import device_names

    gateway = subnet.split("/")[0]
    got = sh("ip", "-4", "-j", "route", "get", gateway, ns=node.host, check=False)
    if got.returncode != 0:
        return False  # (no route: the node has no default route)
    return any(r.get("dev") == device_names(node.world.network)[1] for r in json.loads(got.stdout or "[]"))


def convergence(world, rounds) -> tuple[list[float], list[float]]:
    """A fresh node joins (helper, first ADD); time until both others route to it. Then its
    lease is revoked; time until both others withdrew it."""
    observers = world.nodes[:2]
    join, leave = [], []
    client = world.cluster.client()
    for _ in range(rounds):
        node = world.add_node()
        start_helper(node)
        node.add_pod()
        t0 = time.perf_counter()
        subnet = node.state()["subnet"]
        wait(lambda: all(routed(o, subnet) for o in observers))
        join.append(time.perf_counter() - t0)
        stop_helper(node, kill=True)
        lease = node.state()["lease"]
        t0 = time.perf_counter()
        client.revoke(lease)
        wait(lambda: not any(routed(o, subnet) for o in observers))
        leave.append(time.perf_counter() - t0)
        node.pods.clear()
    return join, leave


def vanish(world, rounds) -> list[float]:
    """A node's helper killed (the node gone): seconds from then until both others withdrew
    its routes, minus the lease TTL (target: ≤ 1 s)."""
    observers = world.nodes[:2]
    late = []
    for _ in range(rounds):
        node = world.add_node()
        start_helper(node)
        node.add_pod()
        subnet = node.state()["subnet"]
        wait(lambda: all(routed(o, subnet) for o in observers))
        t0 = time.perf_counter()
        stop_helper(node, kill=True)
        wait(lambda: not any(routed(o, subnet) for o in observers), timeout=world.ttl + 30)
        late.append(time.perf_counter() - t0 - world.ttl)
        node.pods.clear()
    return late


def programming(world, rounds) -> list[float]:
    """A joining node's record put in etcd (as its claim does) → both observers route it: the
    helpers' watch and programming alone, no new node's ADD or start-up beside it."""
    from cni_plugins.drivers.overlay import mesh

    observers = world.nodes[:2]
    client = world.cluster.client()
    layout = mesh.layout_of({"name": world.network, "subnet": world.subnet, "hostSubnetLength": 24,
                             "store": {"prefix": world.prefix}})
    taken = {kv.key for kv in client.list_prefix(layout.directory)[0]}
    free = [s for s in layout.subnets() if layout.key(s) not in taken][:rounds]
    times = []
    for i, subnet in enumerate(free):
        value = json.dumps({"node": f"joining{i}", "vtepIP": f"198.19.0.{i + 1}",
                            "vtepMAC": f"02:bb:00:00:00:{i + 1:02x}"}).encode()
        t0 = time.perf_counter()
        client.put(layout.key(subnet), value)
        wait(lambda: all(routed(o, str(subnet)) for o in observers))
        times.append(time.perf_counter() - t0)
        client.delete(layout.key(subnet))
        wait(lambda: not any(routed(o, str(subnet)) for o in observers))
    return times


def fake_records(world, count: int) -> None:
    """`count` other nodes' records (valid: subnets of the network, VTEPs on an unused range)."""
    from cni_plugins.drivers.overlay import mesh

    client = world.cluster.client()
    layout = mesh.layout_of({"name": world.network, "subnet": world.subnet, "hostSubnetLength": 24,
                             "store": {"prefix": world.prefix}})
    lease = client.grant(600)
    taken = {kv.key for kv in client.list_prefix(layout.directory)[0]}
    made = 0
    for subnet in layout.subnets():
        if made == count:
            break
        if layout.key(subnet) in taken:
            continue
        made += 1
        value = json.dumps({"node": f"fake{made}", "vtepIP": f"198.18.{made // 250}.{made % 250 + 1}",
                            "vtepMAC": f"02:aa:00:00:{made // 256:02x}:{made % 256:02x}"}).encode()
        client.put(layout.key(subnet), value, lease=lease)


def scale_rows(world, netns, iterations) -> list[str]:
    """ADD (fresh lease) and a converge from a fresh list, with the records there now."""
    from cni_plugins.drivers.overlay import mesh
    from support.common import in_netns

    node = world.nodes[0]
    settings = node.state()["settings"]

    def converge():
        return in_netns(node.host, lambda: mesh.converge(settings, node.env["CNM_STATE_DIR"]))

    adds, convs = [], []
    for _ in range(iterations):
        a, _ = add_del(node, node.conf(), 1, netns)
        adds += a
        t, _ = timed(converge)
        convs.append(t)
    return adds, convs


def throughput(world, netns) -> list[str]:
    """MB/s of one TCP stream, 10 s worth at most 512 MiB: pod on node0 -> pod on node1 (overlay),
    and between two pods on node0's bridge (no VXLAN)."""
    a, b = world.nodes[0], world.nodes[1]
    pa, pb, pa2 = a.add_pod(), b.add_pod(), a.add_pod()
    server = ("import socket,sys,time\ns=socket.socket();s.setsockopt(1,2,1);s.bind(('0.0.0.0',5201));s.listen(1)\n"
              "print('ready',flush=True)\nc,_=s.accept();n=0;t=time.perf_counter()\n"
              "while True:\n d=c.recv(1<<20)\n if not d: break\n n+=len(d)\n"
              "print(n/(time.perf_counter()-t)/1e6,flush=True)")
    client = ("import socket,sys,time\nc=socket.create_connection((sys.argv[1],5201));b=b'x'*(1<<20);t=time.perf_counter()\n"
              "while time.perf_counter()-t<3: c.sendall(b)\nc.close()")
    rates = {}
    for label, (srv, dst, cli) in {"overlay (node0 → node1)": (pb[0], pb[2], pa[0]),
                                   "one bridge (node0 → node0)": (pa2[0], pa2[2], pa[0])}.items():
        proc = subprocess.Popen(["nsenter", f"--net={srv}", "--", sys.executable, "-c", server], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        sh(sys.executable, "-c", client, dst, ns=cli)
        rates[label] = float(proc.stdout.readline())
        proc.wait(timeout=30)
    base = rates["one bridge (node0 → node0)"]
    return [f"| {k} | {v:.0f} MB/s | {v / base:.2f} |" for k, v in rates.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=10, help="convergence samples")
    ap.add_argument("--quick", action="store_true", help="10 iterations, 5 rounds")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "overlay.md"))
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.rounds = 10, 5
    netns = NetnsFactory()
    tmp = tempfile.mkdtemp(prefix="cnm-bench-overlay-")
    cluster = Cluster(3).start()
    from pathlib import Path

    world = World(netns, Path(tmp), cluster, ttl=10)
    out = [f"# cnm-overlay bench ({time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores)", ""]
    try:
        for _ in range(3):
            node = world.add_node()
            start_helper(node)
            node.add_pod()
        wait(lambda: all(len(mesh_of(n)) == 2 for n in world.nodes))
        out += ["## ADD/DEL through the helper, ms", ""] + lifecycle_rows(world, netns, args.iterations) + [""]
        join, leave = convergence(world, args.rounds)
        out += ["## Convergence (2 observers, helper per node), ms", "",
                "| event | median | p95 | target |", "|---|---|---|---|",
                f"| new node's ADD done → routed by the others | {ms(median(join))} | {ms(p95(join))} | p95 ≤ 1000 "
                f"{'ok' if p95(join) <= 1 else 'MISSED'} |",
                f"| lease revoked → withdrawn by the others | {ms(median(leave))} | {ms(p95(leave))} | |", ""]
        late = vanish(world, 3)
        out[-1:-1] = [f"| node gone (helper killed) → withdrawn, beyond its lease TTL ({world.ttl} s) | "
                      f"{ms(median(late))} | {ms(max(late))} (max) | ≤ 1000 {'ok' if max(late) <= 1 else 'MISSED'} |"]
        few_add, few_conv = scale_rows(world, netns, 10)
        few_prog = programming(world, 2 * args.rounds)
        fake_records(world, 200)
        wait(lambda: all(len(mesh_of(n)) >= 202 for n in world.nodes[:3]), timeout=60)  # (not measured beside it)
        many_add, many_conv = scale_rows(world, netns, 10)
        many_prog = programming(world, 2 * args.rounds)
        many_join, _ = convergence(world, args.rounds)
        out += ["## 3 vs 200 nodes in etcd, ms", "", "| what | 3 nodes | 200 nodes | ratio | target |",
                "|---|---|---|---|---|"]
        for label, few, many, target in (("ADD (leased node)", few_add, many_add, 1.2),
                                         ("helpers program a joining node (its record put → routed)", few_prog,
                                          many_prog, 1.2),
                                         ("a new node's ADD done → routed (one poll: routed before)", join,
                                          many_join, None),
                                         ("a converge from a fresh list (start, reconnect)", few_conv, many_conv,
                                          None)):
            r = median(many) / median(few)
            verdict = f"≤ {target}× {'ok' if r <= target else 'MISSED'}" if target else "(report)"
            out.append(f"| {label} | {ms(median(few))} | {ms(median(many))} | {r:.2f}× | {verdict} |")
        out += ["", "## Pod-to-pod TCP, one stream, 3 s", "", "| path | rate | fraction of one bridge |",
                "|---|---|---|"] + throughput(world, netns) + [""]
    finally:
        world.cleanup()
        cluster.stop()
        netns.cleanup()
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
