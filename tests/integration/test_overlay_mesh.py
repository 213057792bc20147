"""The overlay across simulated nodes with their own resident helpers (issue 16 items 3, 4, 5,
7): each node a network namespace on an underlay bridge the test makes, with a mount namespace
of its own (its own /run and /var/lib/cni: the default store, run dir and helper socket) and
its own cnmd; etcd a throwaway 3-member cluster on unix sockets."""

from __future__ import annotations

import itertools
import threading

import pytest

from support.etcd import etcd_cluster3, stopped  # noqa: F401 (fixture)
from support.overlay import World, helper_log, mesh_of, ping, start_helper, stop_helper, tcp_source, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster3):
    w = World(netns, tmp_path, etcd_cluster3, ttl=3, private=True)
    yield w
    w.cleanup()


def nodes_with_helpers(world, n=3):
    nodes = [world.add_node() for _ in range(n)]
    for node in nodes:
        start_helper(node)
    return nodes


def full_mesh(world, nodes):
    """Each node's kernel holds the other nodes' subnets, each via that node's VTEP."""
    def ready():
        states = [n.state() for n in nodes]
        if any(s is None for s in states):
            return False
        for node, own in zip(nodes, states):
            want = {s["subnet"]: s["vtepIP"] for s in states if s is not own}
            if mesh_of(node) != want:
                return False
        return True
    return ready


def test_three_nodes_every_pod_pair_talks(world):
    """Ping and TCP between pods on every pair of nodes, both directions (TCP sees the pod's
    own address: no NAT inside the overlay); the largest DF ping that fits the MTU passes,
    one byte more is refused."""
    nodes = nodes_with_helpers(world)
    pods = [node.add_pod(ipMasq=True) for node in nodes]
    wait_for(full_mesh(world, nodes), what="the full mesh")
    for a, b in itertools.permutations(range(3), 2):
        assert ping(pods[a][0], pods[b][2]), (a, b)
        assert tcp_source(pods[b][0], pods[b][2], pods[a][0], port=5600 + 10 * a + b) == pods[a][2]
    mtu = 1450
    assert ping(pods[0][0], pods[1][2], size=mtu - 28, df=True)
    assert not ping(pods[0][0], pods[1][2], size=mtu - 28 + 1, df=True)


def test_a_vanished_node_is_withdrawn_and_a_restarted_helper_rebuilds(world):
    """A node whose helper dies and does not come back: its lease expires, its routes go from
    the others. A helper killed and restarted on a node: the mesh is back."""
    nodes = nodes_with_helpers(world)
    for node in nodes:
        node.add_pod()
    wait_for(full_mesh(world, nodes), what="the full mesh")
    gone = nodes[2]
    stop_helper(gone, kill=True)
    gone_subnet = gone.state()["subnet"]
    wait_for(lambda: all(gone_subnet not in mesh_of(n) for n in nodes[:2]), timeout=world.ttl + 20,
             what="the vanished node's routes withdrawn")
    # node1's helper killed; its mesh entries deleted by hand; a new helper puts them back
    stop_helper(nodes[1], kill=True)
    from support.overlay import sh
    from cni_plugins.drivers.overlay.mesh import device_names

    _, vx = device_names(world.network)
    sh("ip", "route", "flush", "dev", vx, ns=nodes[1].host)
    assert mesh_of(nodes[1]) == {}
    start_helper(nodes[1])
    wait_for(lambda: set(mesh_of(nodes[1])) == {nodes[0].state()["subnet"]}, what="the mesh rebuilt")


def test_killing_one_etcd_member_during_adds_fails_none(world):
    """SIGKILL of one of three etcd members during 30 ADDs spread over the nodes: 0 failures
    (every ADD here is a stale one: it asks etcd, no helper runs)."""
    nodes = [world.add_node() for _ in range(3)]
    from cni_plugins.drivers.overlay import state

    results = []

    def add(node):
        data = node.state()
        if data is not None:  # stale: the ADD asks etcd again
            data["confirmed"] = 0
            state.write(node.state_dir, world.network, data)
        run = node.run("ADD", node.conf(), node.new_netns(), f"c{len(results)}x{id(node)}")
        results.append(run)

    for i in range(30):
        if i == 10:
            world.cluster.kill(world.cluster.members[0])
        add(nodes[i % 3])
    assert [r for r in results if r.rc != 0] == []
    assert len({n.state()["subnet"] for n in nodes}) == 3


def test_etcd_down_add_works_status_51_and_recovery(world):
    """All etcd members stopped: ADD on a leased node works, STATUS 51; when etcd returns the
    helpers converge without a restart (a node that joins afterwards is in everyone's mesh)."""
    nodes = nodes_with_helpers(world, 2)
    for node in nodes:
        node.add_pod()
    wait_for(full_mesh(world, nodes), what="the full mesh")
    for m in world.cluster.members:
        world.cluster.kill(m)
    pod = nodes[0].add_pod()
    assert ping(pod[0], nodes[1].pods[0][2])
    status = nodes[0].run("STATUS")
    assert status.rc != 0 and status.json["code"] == 51, status
    for m in world.cluster.members:
        world.cluster.restart(m)
    world.cluster.wait_ready()
    late = world.add_node()
    start_helper(late)
    late.add_pod()
    wait_for(full_mesh(world, nodes + [late]), timeout=60, what="the mesh after etcd came back")
    assert nodes[0].run("STATUS").rc == 0


def test_a_hostile_record_is_ignored_by_the_helpers(world):
    nodes = nodes_with_helpers(world, 2)
    for node in nodes:
        node.add_pod()
    wait_for(full_mesh(world, nodes), what="the full mesh")
    c = world.cluster.client()
    directory = f"{world.prefix}/overlay/{world.network}/subnets/".encode()
    c.put(directory + b"10.99.0.0-24", b'{"node":"evil","vtepIP":"192.0.2.66","vtepMAC":"02:00:00:00:00:66"}')
    c.put(directory + b"10.250.200.0-24", b"{bad json" + b"x" * 5000)
    c.put(directory + b"10.250.201.0-24", b'{"node":"evil","vtepIP":"10.250.3.3","vtepMAC":"02:00:00:00:00:66"}')
    wait_for(lambda: all(helper_log(n).count("ignored record") >= 3 for n in nodes), what="the log lines")
    assert all(n.helper.poll() is None for n in nodes)
    wait_for(full_mesh(world, nodes), what="the mesh unchanged")
    assert ping(nodes[0].pods[0][0], nodes[1].pods[0][2])


def test_a_helper_finds_a_network_an_in_process_add_joined(world):
    """The node's first ADD ran in-process (not through its helper): the helper still finds the
    network (its scan of the store) and keeps the node's lease and mesh."""
    nodes = nodes_with_helpers(world, 2)
    nodes[0].env["CNM_HELPER_SOCKET"] = "off"
    nodes[0].add_pod()
    nodes[0].env.pop("CNM_HELPER_SOCKET")
    nodes[1].add_pod()
    wait_for(full_mesh(world, nodes), what="the full mesh")
    assert "keeping this node's lease and mesh" in helper_log(nodes[0])


def test_a_deleted_vxlan_device_is_recreated_with_its_mesh(world):
    """The node's VXLAN device deleted by hand: its helper recreates it (the same VTEP MAC, so
    the other nodes' entries stay right) with the whole mesh; pods talk again."""
    from cni_plugins.drivers.overlay.mesh import device_names
    from support.overlay import sh

    nodes = nodes_with_helpers(world, 2)
    pods = [n.add_pod() for n in nodes]
    wait_for(full_mesh(world, nodes), what="the full mesh")
    _, vx = device_names(world.network)
    mac = nodes[0].state()["vtepMAC"]
    sh("ip", "link", "del", vx, ns=nodes[0].host)
    assert not ping(pods[1][0], pods[0][2])
    wait_for(full_mesh(world, nodes), what="the mesh after the device came back")
    link = __import__("json").loads(sh("ip", "-j", "link", "show", vx, ns=nodes[0].host).stdout)[0]
    assert link["address"] == mac
    assert ping(pods[1][0], pods[0][2]) and ping(pods[0][0], pods[1][2])


def test_an_add_does_not_wait_on_a_wedged_store_the_helper_found_down(world):
    """Every etcd member wedged (SIGSTOP: connections hang instead of being refused, as in a
    partition) past half the lease TTL. The helper's keep-alive found the store down, so an ADD
    on the leased node takes the node's own subnet at once. Before, each ADD first tried to
    claim again and waited a timeout per member (15 s) before falling back to the same subnet."""
    import time

    from cni_plugins.drivers.overlay import etcd, state

    world.ttl = 30  # fresh for 15 s; the keeper tries every 10 s, a wedged try costs 3 × 2 s
    node = nodes_with_helpers(world, 1)[0]
    first = node.add_pod()
    with stopped(*world.cluster.members):
        wait_for(lambda: state.store_down(node.state(), world.ttl) and not state.fresh(node.state(), world.ttl),
                 timeout=world.ttl / 2 + 10, what="the keeper to find etcd down")
        started = time.monotonic()
        pod = node.add_pod()
        took = time.monotonic() - started
        assert not state.expired(node.state())
        assert took < etcd.DEFAULT_TIMEOUT, f"the ADD waited {took:.1f} s on the store"
        assert ping(pod[0], first[2])
    world.cluster.wait_ready()
    wait_for(lambda: state.fresh(node.state(), world.ttl), timeout=world.ttl, what="the lease confirmed again")
