"""Names across the nodes of an overlay (issue 16 item 1, `dnsEnabled`, with issue 14's rules):
a pod resolves the pods of its network on every node, by the same names the bridge gives
(aliases on the network, K8S_POD_NAME, cnmctl run's name), and loses them when they go.
Simulated nodes with their own netns, mount namespace and cnmd; etcd a 3-member cluster on
unix sockets; every query is asked from inside a pod's netns, of the address its ADD result's
`dns` names."""

from __future__ import annotations

import json

import dns.exception
import dns.rcode
import pytest

from dns_support import addresses, query
from support.common import unique
from support.etcd import etcd_cluster3  # noqa: F401 (fixture)
from support.overlay import World, helper_log, mesh_of, start_helper, stop_helper, wait_for

DOMAIN = "ov.test"


@pytest.fixture
def world(netns, tmp_path, etcd_cluster3):
    w = World(netns, tmp_path, etcd_cluster3, ttl=3, private=True)
    w.keys = {"dnsEnabled": True, "dnsDomain": DOMAIN, "dnsUpstreams": []}
    yield w
    w.cleanup()


def nodes_with_helpers(world, n):
    nodes = [world.add_node() for _ in range(n)]
    for node in nodes:
        start_helper(node)
    return nodes


class Pod:
    def __init__(self, node, names: tuple[str, ...]):
        self.node = node
        self.ns = node.new_netns()
        self.cid = unique("c", 30)
        conf = node.conf(runtimeConfig={"aliases": {node.world.network: list(names)}})
        run = node.run("ADD", conf, self.ns, self.cid)
        assert run.rc == 0, run
        self.address = run.json["ips"][0]["address"].split("/")[0]
        self.dns = run.json["dns"]
        node.pods.append((self.ns, self.cid, self.address))

    @property
    def server(self) -> str:
        return self.dns["nameservers"][0]

    def delete(self) -> None:
        self.node.del_pod((self.ns, self.cid, self.address))


def answer(pod: Pod, name: str, rdtype: str = "A"):
    """(rcode, sorted answers) of `name` asked from inside `pod`; None when unanswered."""
    try:
        reply = query(pod.ns, pod.server, name, rdtype, timeout=2)
    except dns.exception.Timeout:
        return None
    return dns.rcode.to_text(reply.rcode()), addresses(reply)


def resolves(pod: Pod, name: str, want: list[str]):
    return lambda: answer(pod, name) == ("NOERROR", sorted(want))


def unknown(pod: Pod, label: str):
    """(asked under the network's domain: a bare unknown name is forwarded, and these tests
    give the network no upstream)"""
    return lambda: answer(pod, f"{label}.{DOMAIN}.") == ("NXDOMAIN", [])


def test_pods_on_three_nodes_resolve_each_other_by_name(world):
    """Every pod resolves every other node's pod by its alias, bare and as <name>.<dnsDomain>,
    from the name server its result names (the node's own gateway); PTR of a remote pod's
    address gives its first name; a name on two other nodes answers with both addresses,
    and a name a local pod holds answers with the local pod only."""
    nodes = nodes_with_helpers(world, 3)
    pods = [Pod(node, (f"web{i}", f"www{i}")) for i, node in enumerate(nodes)]
    for pod in pods:
        gateway = pod.address.rsplit(".", 1)[0] + ".1"
        assert pod.dns == {"nameservers": [gateway], "search": [DOMAIN]}
    for me in pods:
        for i, other in enumerate(pods):
            wait_for(resolves(me, f"web{i}.", [other.address]), what=f"web{i} from {me.node.name}")
            assert answer(me, f"www{i}.{DOMAIN}.") == ("NOERROR", [other.address])
    reverse = ".".join(reversed(pods[2].address.split("."))) + ".in-addr.arpa."
    reply = query(pods[0].ns, pods[0].server, reverse, "PTR")
    assert [r.to_text() for rrset in reply.answer for r in rrset] == [f"web2.{DOMAIN}."]
    # The same name on two nodes: both addresses elsewhere, the local pod's only at home.
    shared = [Pod(nodes[1], ("shared",)), Pod(nodes[2], ("shared",))]
    wait_for(resolves(pods[0], "shared.", [p.address for p in shared]), what="shared from node0")
    assert answer(shared[0], "shared.") == ("NOERROR", [shared[0].address])
    assert answer(shared[1], "shared.") == ("NOERROR", [shared[1].address])
    assert all(n.helper.poll() is None for n in nodes)


def test_a_deleted_pod_and_a_vanished_node_lose_their_names(world):
    """DEL on one node: its pod's name stops resolving on the others. A node whose cnmd is
    killed and never comes back: its names go with its lease (TTL), its pod not deleted."""
    nodes = nodes_with_helpers(world, 3)
    pods = [Pod(node, (f"p{i}",)) for i, node in enumerate(nodes)]
    for i in (1, 2):
        wait_for(resolves(pods[0], f"p{i}.", [pods[i].address]), what=f"p{i} from node0")
    pods[1].delete()
    wait_for(unknown(pods[0], "p1"), what="p1 gone from node0")
    wait_for(unknown(pods[2], "p1"), what="p1 gone from node2")
    assert answer(pods[0], "p2.") == ("NOERROR", [pods[2].address])
    stop_helper(nodes[2], kill=True)
    wait_for(unknown(pods[0], "p2"), timeout=world.ttl + 30, what="the vanished node's name gone")
    assert answer(pods[2], "p2.") is None or answer(pods[2], "p2.")[0] != "NOERROR"  # (its server went with cnmd)


def test_hostile_name_records_are_ignored(world):
    """Records in etcd with bad JSON (also nested deeper than the parser's stack), a huge value, a name that is no DNS label, an address
    outside the key's subnet, a subnet nobody holds or outside the network, or another node's
    claim on a name a local pod holds: logged (or, unbound to a holder's lease, silently
    left out) and ignored; the helpers live; the local pod keeps its name. A key under a node's
    own subnet that it did not write is deleted by that node."""
    nodes = nodes_with_helpers(world, 2)
    home = Pod(nodes[0], ("home",))
    away = Pod(nodes[1], ("away",))
    wait_for(resolves(home, "away.", [away.address]), what="away from node0")
    c = world.cluster.client()
    # A node of the attacker's: a valid subnet record on a lease of its own (no pod traffic goes there).
    held = {nodes[0].state()["subnet"], nodes[1].state()["subnet"]}
    evil = next(s for s in ("10.250.77.0/24", "10.250.78.0/24") if s not in held)
    key = evil.replace("/", "-")
    lease = c.grant(120)
    c.put(f"{world.prefix}/overlay/{world.network}/subnets/{key}".encode(),
          b'{"node":"evil","vtepIP":"192.0.2.77","vtepMAC":"02:00:00:00:00:77"}', lease)
    base = f"{world.prefix}/overlay/{world.network}/names/".encode()
    inside = evil.rsplit(".", 1)[0] + ".5"

    def record(names, addrs):
        return json.dumps({"node": "evil", "names": names, "addresses": addrs}).encode()

    c.put(base + f"{key}/e0".encode(), b"[" * 3000, lease)  # (json.loads: RecursionError, once fatal to every converge)
    c.put(base + f"{key}/e1".encode(), b"{bad json", lease)
    c.put(base + f"{key}/e2".encode(), record(["huge"], [inside]) + b" " * 10000, lease)
    c.put(base + f"{key}/e3".encode(), record(["not_a_label"], [inside]), lease)
    c.put(base + f"{key}/e4".encode(), record(["outside"], ["192.0.2.9"]), lease)
    c.put(base + b"10.250.222.0-24/e5", record(["ghost"], ["10.250.222.5"]))  # nobody's subnet, no lease
    c.put(base + b"10.99.0.0-24/e6", record(["far"], ["10.99.0.5"]))  # outside the network
    c.put(base + f"{key}/e7".encode(), record(["home", "stolen"], [inside]), lease)  # a name local to node0
    own = nodes[1].state()["subnet"].replace("/", "-")
    planted = base + f"{own}/e8".encode()
    c.put(planted, record(["planted"], [away.address]), int(nodes[1].state()["lease"]))
    wait_for(resolves(home, "stolen.", [inside]), what="the attacker's other name")
    assert answer(home, "home.") == ("NOERROR", [home.address])
    # (node1 holds no 'home'; its view converges on its own, after node0's)
    wait_for(resolves(away, "home.", [home.address, inside]), what="node1 answering both claims on 'home'")
    for name in ("huge", "outside", "ghost", "far"):
        assert unknown(home, name)(), name
    wait_for(lambda: c.get(planted) is None, what="node1 deleting the key planted under its subnet")
    wait_for(lambda: helper_log(nodes[0]).count("ignored name record") >= 6, what="the log lines")
    assert "ignored name 'home' of node 'evil'" in helper_log(nodes[0])
    assert all(n.helper.poll() is None for n in nodes)
    c.revoke(lease)
    wait_for(unknown(home, "stolen"), what="the attacker's names gone with its lease")


def test_etcd_down_local_names_resolve_and_names_converge_after(world):
    """All etcd members stopped: a pod added meanwhile resolves on its own node at once;
    when etcd returns, the helpers publish it and the other node resolves it, no restart."""
    world.ttl = 10  # (an ADD during the outage must find the node's lease not yet expired)
    nodes = nodes_with_helpers(world, 2)
    first = [Pod(node, (f"a{i}",)) for i, node in enumerate(nodes)]
    wait_for(resolves(first[0], "a1.", [first[1].address]), what="a1 from node0")
    for m in world.cluster.members:
        world.cluster.kill(m)
    late = [Pod(node, (f"b{i}",)) for i, node in enumerate(nodes)]
    assert answer(first[0], "b0.") == ("NOERROR", [late[0].address])
    assert answer(first[1], "b1.") == ("NOERROR", [late[1].address])
    for m in world.cluster.members:
        world.cluster.restart(m)
    world.cluster.wait_ready()
    wait_for(resolves(first[0], "b1.", [late[1].address]), timeout=60, what="b1 from node0 after etcd returned")
    wait_for(resolves(first[1], "b0.", [late[0].address]), timeout=60, what="b0 from node1 after etcd returned")


def test_names_too_big_for_a_list_never_stop_the_mesh(world):
    """Finding (names across nodes, item "huge or many records"): the helper listed the leases
    and the names in one range, capped (100000 keys, 32 MiB): names past the cap (a big
    cluster's pods, or one writer's junk under a subnet nobody holds) made every converge
    fail: no watch, and a node joining later was never meshed. Now the names are listed apart;
    only they are skipped (logged)."""
    world.ttl = 60  # (c, without a helper, keeps its lease while etcd fills)
    a = nodes_with_helpers(world, 1)[0]
    Pod(a, ("home",))
    client = world.cluster.client(timeout=60)
    junk = f"{world.prefix}/overlay/{world.network}/names/10.250.250.0-24/".encode()
    for i in range(40):
        client.put(junk + b"big%03d" % i, b"x" * (1 << 20))
    stop_helper(a)
    start_helper(a)
    c = world.add_node()
    c.add_pod()
    wait_for(lambda: c.state()["subnet"] in mesh_of(a), timeout=60, what="a to mesh the node that joined later")
    assert "names not listed" in helper_log(a) and a.helper.poll() is None
