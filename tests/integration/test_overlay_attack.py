"""cnm-overlay under attack (issue 16, hostile review): two machines on one subnet, hostile
records in etcd, forged log lines. Simulated nodes (a netns each on an
underlay bridge the test makes) and throwaway etcd clusters, as in test_overlay*.py."""

from __future__ import annotations

import http.client
import ipaddress
import json
import signal

import pytest

from cni_plugins.drivers.overlay import lease
from support.common import unique
from support.etcd import etcd_cluster, etcd_cluster3  # noqa: F401 (fixtures)
from support.overlay import World, helper_log, mesh_of, start_helper, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=2)
    yield w
    w.cleanup()


@pytest.fixture
def world3(netns, tmp_path, etcd_cluster3):
    w = World(netns, tmp_path, etcd_cluster3, ttl=10)
    yield w
    w.cleanup()


def layout_of(world, length=24) -> lease.Layout:
    return lease.Layout(world.prefix, world.network, ipaddress.ip_network(world.subnet), length)


def record(node="intruder", vtep="192.0.2.77", mac="02:00:00:00:00:77") -> bytes:
    return json.dumps({"node": node, "vtepIP": vtep, "vtepMAC": mac}).encode()


def test_an_expired_lease_is_not_reused_while_etcd_is_unreachable(world):
    """Two nodes on one subnet: a node whose lease expired (and whose subnet another node then
    claimed) must not hand out addresses of that subnet when etcd is unreachable from it;
    before, the stale state file was trusted however old, and both nodes allocated from it."""
    a = world.add_node()
    a.add_pod()
    held = a.state()
    client = world.cluster.client()
    wait_for(lambda: client.time_to_live(held["lease"]) == -1, timeout=60, what="the lease to expire")
    other = lease.Record(ipaddress.ip_network("0.0.0.0/32"), "intruder", "192.0.2.77", "02:00:00:00:00:77")
    taken = lease.claim(client, layout_of(world), other, ttl=60, last=held["subnet"])
    assert str(taken.subnet) == held["subnet"]
    world.cluster.kill(world.cluster.members[0])
    run = a.run("ADD", a.conf(), world.netns("cnmp"), unique("c", 30))
    assert run.rc != 0 and run.json["code"] == 11 and "etcd" in run.json["msg"], run


def test_a_second_key_for_one_subnet_is_ignored(world):
    """A record under a non-canonical key (`10.250.1.0-024` for 10.250.1.0/24) parsed as the
    subnet: a second holder of one subnet. Naming a node, it made that node's every claim
    fail (code 11 after hundreds of rounds); it is now skipped as not the subnet's key."""
    lay = layout_of(world, 25)
    a = world.add_node()
    client = world.cluster.client()
    client.put(lay.directory + b"10.250.1.0-025", record(node=a.name, vtep=a.address))
    records, skipped, _ = lease.read_all(client, lay)
    assert records == [] and len(skipped) == 1 and "key" in skipped[0], skipped
    a.add_pod(subnet="10.250.0.0/23", hostSubnetLength=25)
    assert a.state()["subnet"] in {str(s) for s in lay.subnets()}


def test_an_ipv6_vtep_does_not_break_the_mesh(world):
    """One record with an IPv6 vtepIP (the kernel refuses its FDB entry on an IPv4 VXLAN
    device) failed the whole mesh: every stale ADD of every node failed (code 999)."""
    lay = layout_of(world)
    world.cluster.client().put(lay.key(ipaddress.ip_network("10.250.200.0/24")), record(vtep="fd00::77"))
    a = world.add_node()
    pod = a.add_pod()
    assert pod[2] and mesh_of(a) == {}


def test_two_machines_with_one_node_name_do_not_share_a_subnet(world):
    """A cloned machine-id (or a copied nodeName): the second machine took over the first's
    live record ("its own") and both put pods on one subnet. It is refused (code 11) while
    the first's lease lives; the record keeps the first machine's VTEP."""
    world.ttl = 60  # (a's lease must outlive b's ADD on a loaded machine)
    a, b = world.add_node(), world.add_node()
    a.add_pod()
    mine = a.state()
    run = b.run("ADD", b.conf(nodeName=a.name), b.new_netns(), unique("c", 30))
    assert run.rc != 0 and run.json["code"] == 11 and "another machine" in run.json["msg"], run
    kv = world.cluster.client().get(layout_of(world).key(ipaddress.ip_network(mine["subnet"])))
    assert json.loads(kv.value)["vtepIP"] == a.address


def watchers(member) -> int:
    """How many watches the etcd member serves (its /metrics)."""
    from cni_plugins.drivers.overlay import etcd

    conn = etcd._UnixConnection(member.client_url[len("unix://"):], 5)
    try:
        conn.request("GET", "/metrics")
        for line in conn.getresponse().read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    except (OSError, http.client.HTTPException):
        pass
    finally:
        conn.close()
    return 0


def test_a_wedged_etcd_member_does_not_freeze_the_mesh(world3):
    """The helper's watch stream is on a member that stops (SIGSTOP: a hung member, or one cut
    off from the quorum, keeps the connection open and silent). The cluster goes on without
    it; a node that joins must still be routed to. Before, the watch waited forever."""
    a = world3.add_node()
    first = world3.cluster.members[0]
    start_helper(a)
    a.add_pod()
    wait_for(lambda: watchers(first) >= 1, what="the helper's watch on the first member")
    first.proc.send_signal(signal.SIGSTOP)
    try:
        world3.cluster.wait_ready()  # (a new leader, if it was the leader)
        b = world3.add_node()
        b.add_pod()
        wanted = b.state()["subnet"]
        wait_for(lambda: mesh_of(a).get(wanted) == b.address, timeout=90, what="a to route to b")
    finally:
        first.proc.send_signal(signal.SIGCONT)


def test_a_wedged_first_member_does_not_cost_a_short_lease(netns, tmp_path, etcd_cluster3):
    """With the first endpoint hung, every keep-alive of the helper waited for it (a new client
    per call) before trying the next: with leaseTTL 3 the lease expired between two
    keep-alives, again and again, and the node re-bound its record every time ("lease ... is
    gone"). The helper now keeps its client, which remembers the member that answered."""
    world = World(netns, tmp_path, etcd_cluster3, ttl=3)
    try:
        a = world.add_node()
        start_helper(a)
        a.add_pod()
        wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve")
        first = world.cluster.members[0]
        first.proc.send_signal(signal.SIGSTOP)
        try:
            held = a.state()["lease"]
            stamps = set()

            def kept_five_times():
                stamps.add(a.state()["confirmed"])
                return len(stamps) > 6

            wait_for(kept_five_times, timeout=120, what="five keep-alives")
            assert "is gone" not in helper_log(a), helper_log(a)
            assert a.state()["lease"] == held
        finally:
            first.proc.send_signal(signal.SIGCONT)
    finally:
        world.cleanup()


def test_a_hostile_key_cannot_forge_helper_log_lines(world):
    """A key with a newline was logged as is: etcd's content wrote lines of its own choosing
    into cnmd's log (and `cnmctl doctor`)."""
    a = world.add_node()
    start_helper(a)
    a.add_pod()
    lay = layout_of(world)
    world.cluster.client().put(lay.directory + b"x\ncnmd[1]: FORGED", b"{}")
    wait_for(lambda: "FORGED" in helper_log(a), what="the helper to log the record")
    assert not any(line.startswith("cnmd[1]: FORGED") for line in helper_log(a).splitlines())
