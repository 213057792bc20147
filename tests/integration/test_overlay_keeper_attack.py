"""cnm-overlay's subnet lease after the keeper, state-lock and give-back changes (hostile
review): the give-back of a just-claimed subnet, the keeper's reconverges, helper restarts.
Simulated nodes and throwaway etcd clusters, as in test_overlay_rebind_attack.py."""

from __future__ import annotations

import ipaddress
import time

import pytest

from cni_plugins.drivers.overlay.mesh import device_names
from support.common import unique
from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, helper_log, layout_of, records, sh, start_helper, stop_helper, try_add, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=3)
    yield w
    w.cleanup()


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


def test_a_held_state_lock_does_not_cost_the_node_its_lease(world):
    """A process holds the network's state-file lock and does not let go (stopped, frozen in a
    cgroup, stuck on a slow disk). The keeper refreshes the etcd lease, then waits up to 10 s
    for the lock to stamp the file (under the agent's lock): one round takes 10 s + TTL/3, so
    with a leaseTTL under ~15 s the lease lapses between two keep-alives, and the converge that
    follows re-claims the subnet, fails on the state write and gives it back. The node's record
    must stay while its helper runs and etcd is up."""
    import subprocess
    import sys

    from cni_plugins.drivers.overlay import state

    a = world.add_node()
    start_helper(a)
    a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    key = own_key(world, a.state()["subnet"])
    client = world.cluster.client()
    first = client.get(key).create_revision
    lock = state.path(a.state_dir, world.network) + ".lock"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(3600)\n",
                               lock], stdout=subprocess.PIPE, text=True)
    lost = []
    try:
        assert holder.stdout.readline().strip() == "held"
        end = time.monotonic() + 5 * world.ttl
        while time.monotonic() < end:
            kv = client.get(key)
            if kv is None or kv.create_revision != first:
                lost.append(None if kv is None else kv.create_revision)
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()
    assert not lost, f"the node's record was gone or re-created {len(lost)} times in 5 TTLs while a process " \
                     f"held the state lock (helper running, etcd up):\n{helper_log(a)[-2500:]}"


def test_a_state_file_removed_by_hand_does_not_drop_the_lease_of_live_pods(world):
    """The network's state file removed by hand (a cleanup script, a restore of an old backup of
    /var/lib/cni) while the node's pods run: the agent takes the missing file as 'the network is
    gone from this node' and stops keeping the lease, so the record lapses within a TTL and the
    subnet the pods use is free for another node, with the helper running and etcd up."""
    import os

    from cni_plugins.drivers.overlay import state

    a = world.add_node()
    start_helper(a)
    a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    mine = a.state()["subnet"]
    key = own_key(world, mine)
    client = world.cluster.client()
    os.unlink(state.path(a.state_dir, world.network))
    time.sleep(3 * world.ttl)
    assert client.get(key) is not None, \
        f"{mine} is free in etcd while node a's pod {a.pods[0][2]} uses it (helper running, etcd up)"
