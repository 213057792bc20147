"""cnm-overlay's subnet leases after the re-bind to a raised leaseTTL, the keeper's claim on a
too-short lease and the state file's lock (hostile review): no two nodes ever hold the same
subnet, nothing is left half-created, the helper never stops keeping the lease. Simulated
nodes and throwaway etcd clusters, as in test_overlay_outage_attack.py."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import threading
import time

import pytest

from cni_plugins.drivers.overlay import state
from support.common import exec_plugin, unique
from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, helper_log, layout_of, leases, records, start_helper, try_add, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=3)
    yield w
    w.cleanup()


def lock_path(node) -> str:
    return state.path(node.state_dir, node.world.network) + ".lock"


def test_the_keeper_survives_a_state_write_error(world):
    """The state file's lock cannot be opened for a while (here a stray directory at
    `<file>.lock`: EISDIR; ENOSPC or a read-only remount do the same): the keeper's amend raised
    OSError out of its loop and its thread died, while the agent (whose liveness is the
    watcher's) stayed registered, so nothing restarts it. Once the lock opens again, the lease
    is refreshed only by the watcher's idle converges (every leaseTTL, just too late): the node's
    record expires again and again, its subnet free in etcd each time."""
    a = world.add_node()
    start_helper(a)
    a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    os.unlink(lock_path(a))  # (the lock's file is made again by the next writer once this goes)
    os.mkdir(lock_path(a))
    try:
        wait_for(lambda: "IsADirectoryError" in helper_log(a) or "Exception in thread" in helper_log(a),
                 timeout=30, what="a keeper round over the broken lock")
        time.sleep(3)  # (a few keeper rounds: a keeper that survives logs and goes on)
    finally:
        os.rmdir(lock_path(a))
    client = world.cluster.client()
    key = layout_of(world).key(ipaddress.ip_network(a.state()["subnet"]))
    wait_for(lambda: client.get(key) is not None and client.time_to_live(client.get(key).lease) > 0, timeout=30,
             what="the node's record back on a live lease")
    seen = {client.get(key).create_revision}
    end = time.monotonic() + 4 * world.ttl
    while time.monotonic() < end:  # four TTLs: a keeper at work refreshes every TTL/3
        kv = client.get(key)
        seen.add(kv.create_revision if kv is not None else 0)
        time.sleep(0.1)
    assert seen != {0} and len(seen) == 1, \
        f"the node's record vanished or was re-created {len(seen) - 1} times in 4 TTLs: the keeper is dead\n" \
        f"{helper_log(a)[-3000:]}"


def test_a_failed_state_write_leaves_no_claim_in_etcd(world):
    """An ADD whose state file cannot be written (the lock cannot be opened) fails (code 999),
    but its converge had already claimed a subnet in etcd and created the VXLAN device: the
    record, bound to a fresh lease of leaseTTL, names the node for a whole TTL (a day at
    leaseTTL 86400) while the node knows nothing of it. Nothing must be left half-created."""
    world.ttl = 600
    a = world.add_node()
    os.makedirs(lock_path(a))
    try:
        run = try_add(a)
    finally:
        os.rmdir(lock_path(a))
    assert run.rc != 0, run
    held = [r for r in records(world) if r.node == a.name]
    assert held == [], f"the failed ADD left {[str(r.subnet) for r in held]} claimed in etcd for {a.name}; " \
                       f"{len(leases(world))} etcd lease(s) live"


def test_an_add_does_not_hang_on_a_lock_a_stopped_process_holds(world):
    """A process stopped (SIGSTOP: a debugger, a frozen cgroup) while it holds the state file's
    flock: every ADD with a stale state file converges, then waits on the flock forever (no
    timeout), as does the helper's keeper (which holds the agent's lock meanwhile)."""
    a = world.add_node()
    a.add_pod()
    holder = subprocess.Popen(["flock", "-x", lock_path(a), "sleep", "600"])
    try:
        wait_for(lambda: subprocess.run(["flock", "-n", "-x", lock_path(a), "true"]).returncode != 0,
                 what="the holder to take the lock")
        holder.send_signal(signal.SIGSTOP)
        wait_for(lambda: not state.fresh(a.state(), world.ttl), what="the state file to go stale")
        ns = a.new_netns()
        try:  # (an ADD takes a second or two here; 30 s is a hang)
            run = exec_plugin("cnm-overlay", "ADD", a.conf(leaseTTL=4), a.env, container_id=unique("c", 30),
                              netns=ns, ifname="eth0", host_netns=a.host, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the ADD hung on the state file's lock (killed after 30 s)")
        assert run.json is not None, run  # (a CNI answer, not a hang)
    finally:
        holder.kill()
        holder.wait()


def test_concurrent_adds_across_ttl_changes_keep_one_subnet_per_node(world):
    """Holds check: two nodes, each with two conflists of one network differing in leaseTTL
    (3 and 8), ADDs racing in rounds (re-binds losing their compare-and-swap): one record per
    node, distinct subnets, no lease granted for a lost bind left in etcd."""
    nodes = [world.add_node(), world.add_node()]
    for n in nodes:
        n.add_pod()
    failures = []

    def add(n, ttl):
        run = try_add(n, leaseTTL=ttl)
        if run.rc != 0:
            failures.append(run)

    for ttls in ((8, 3, 8, 3), (3, 8, 3, 8)):
        threads = [threading.Thread(target=add, args=(n, t)) for n in nodes for t in ttls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures
    held = records(world)
    assert sorted(r.node for r in held) == sorted(n.name for n in nodes), held
    assert len({r.subnet for r in held}) == len(held), held
    for n in nodes:
        mine = [r for r in held if r.node == n.name][0]
        assert n.state()["subnet"] == str(mine.subnet)
    wait_for(lambda: len(leases(world)) <= len(held) + 2, timeout=30,
             what="the short leases to expire")  # (+2: a node's last file may still name its 3 s one)
    wait_for(lambda: set(leases(world)) <= {r.lease for r in records(world)}, timeout=30,
             what=f"only the records' leases left: {leases(world)}")


def test_the_keeper_follows_the_lease_its_record_stands_on(world):
    """Two ADDs racing a leaseTTL change can leave the state file on another live lease than
    the one the node's record was re-bound to (each wrote what its own claim saw). The keeper
    then refreshed the file's lease only: the record's lapsed, the subnet was free in etcd
    (recreated at the next claim, if still free) while the node's pods kept using it. Now the
    keeper sees the record on another lease and claims again: the record never lapses."""
    a = world.add_node()
    start_helper(a)
    a.add_pod()

    def own():
        return next((r for r in records(world) if r.node == a.name), None)

    wait_for(lambda: own() is not None and own().lease == a.state()["lease"], what="the helper's converge")
    before = own()
    client = world.cluster.client()
    other = client.grant(60)
    try:
        data = a.state()
        data["lease"] = other  # what the losing ADD of such a race writes
        state.write(a.state_dir, world.network, data)
        time.sleep(world.ttl * 3)  # (three of the record's TTLs: it lapses unless kept alive)
        after = own()
        assert after is not None and after.created == before.created and after.subnet == before.subnet, \
            f"the node's record lapsed and was made again: {before} -> {after}"
        assert a.state()["lease"] == after.lease
    finally:
        client.revoke(other)
