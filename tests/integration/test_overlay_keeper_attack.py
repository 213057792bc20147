"""cnm-overlay's subnet lease after the keeper, state-lock and give-back changes (hostile
review): the give-back of a just-claimed subnet, the keeper's reconverges, helper restarts.
Simulated nodes and throwaway etcd clusters, as in test_overlay_rebind_attack.py."""

from __future__ import annotations

import ipaddress
import time

import pytest

from cni_plugins.drivers.overlay import lease
from cni_plugins.drivers.overlay.mesh import device_names
from support.common import unique
from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, helper_log, sh, start_helper, stop_helper, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=3)
    yield w
    w.cleanup()


def layout_of(world) -> lease.Layout:
    return lease.Layout(world.prefix, world.network, ipaddress.ip_network(world.subnet), 24)


def records(world) -> list[lease.Record]:
    found, _, _ = lease.read_all(world.cluster.client(), layout_of(world))
    return found


def leases(world) -> list[int]:
    answer = world.cluster.client().call("/v3/lease/leases", {})
    return sorted(int(entry["ID"]) for entry in answer.get("leases") or [])


def try_add(node, **keys):
    ns = node.new_netns()
    cid = unique("c", 30)
    run = node.run("ADD", node.conf(**keys), ns, cid)
    if run.rc == 0:
        node.pods.append((ns, cid, run.json["ips"][0]["address"].split("/")[0]))
    return run


def block_vxlan(node) -> str:
    """The node's VXLAN device removed and a device of the test's own (same VNI, port and local
    address) put in its way: the kernel refuses to create the node's (EEXIST, then 'vanished')."""
    _, vx = device_names(node.world.network)
    sh("ip", "link", "del", vx, ns=node.host, check=False)
    blocker = unique("blk", 15)
    sh("ip", "link", "add", blocker, "type", "vxlan", "id", "1", "dstport", "4789", "local", node.address,
       "dev", "eth0", ns=node.host)
    return blocker


def own_key(world, subnet: str) -> bytes:
    return layout_of(world).key(ipaddress.ip_network(subnet))


def test_the_give_back_does_not_free_the_subnet_the_nodes_pods_use(world):
    """The node's record lapsed while its helper restarted (down longer than leaseTTL), and its
    VXLAN device cannot be created (a device in the way). The helper's converge claims the
    node's old subnet again (last=), the device fails, and the give-back releases it: 'claimed
    just now: nobody uses it' -- but the node's pods have addresses in it. Every retry claims it
    and gives it back, so it is free in etcd nearly all the time, and another node's ADD takes
    it: two nodes on one subnet while the helper runs and etcd is up."""
    world.subnet = "10.250.0.0/23"  # two /24s: one for a, one for c; b can only get a's
    a, c = world.add_node(), world.add_node()
    start_helper(a)
    start_helper(c)
    a.add_pod()
    c.add_pod()
    mine = a.state()["subnet"]
    key = own_key(world, mine)
    client = world.cluster.client()
    stop_helper(a)
    wait_for(lambda: client.get(key) is None, timeout=30, what="a's record to lapse")
    block_vxlan(a)
    start_helper(a)
    wait_for(lambda: "VXLAN" in helper_log(a) or "vanished" in helper_log(a), timeout=30,
             what="the helper's converge to meet the blocked device")
    b = world.add_node()
    got = None
    for _ in range(10):
        run = try_add(b)
        if run.rc == 0:
            got = run.json["ips"][0]["address"]
            break
        time.sleep(0.3)
    holder = client.get(key)
    assert got is None or not ipaddress.ip_interface(got) in ipaddress.ip_network(mine), \
        f"node b got {got} in {mine}, the subnet node a's live pod {a.pods[0][2]} uses (a's helper runs, etcd " \
        f"is up; record now {holder.value if holder else None}):\n{helper_log(a)[-2000:]}"


def test_a_device_that_cannot_be_made_is_logged_once_not_every_keeper_round(world):
    """The node's VXLAN device deleted and its re-creation refused (a device in the way) while
    the lease is alive: the watcher logs its failing converge once, but the keeper logs 'VXLAN
    device missing; recreating it' again every round (every leaseTTL/3) for as long as the
    condition lasts -- a log line per round, forever, for one fault. The lease must stay
    the node's meanwhile (its record is listed: nothing is given back)."""
    a = world.add_node()
    start_helper(a)
    a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    mine = a.state()["subnet"]
    block_vxlan(a)
    wait_for(lambda: "VXLAN device missing" in helper_log(a), timeout=30, what="the keeper to see the device gone")
    time.sleep(5 * world.ttl / 3)  # five keeper rounds
    held = [str(r.subnet) for r in records(world) if r.node == a.name]
    assert held == [mine], f"the node's record went while its pods use {mine}: {held}"
    lines = [line for line in helper_log(a).splitlines() if "VXLAN device missing" in line]
    assert len(lines) <= 1, f"{len(lines)} lines for one missing device in five keeper rounds:\n" + "\n".join(lines)
