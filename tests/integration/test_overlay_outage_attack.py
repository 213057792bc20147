"""cnm-overlay when etcd is unreachable (hostile review of the keeper's `unreachable` stamp and
of the ADD that trusts a stale lease while the helper found the store down): the cardinal rule
is that no two nodes ever hold the same subnet. Simulated nodes and throwaway etcd clusters, as
in test_overlay_attack.py."""

from __future__ import annotations

import ipaddress
import signal

import pytest

from cni_plugins.drivers.overlay import etcd, lease, state
from support.common import unique
from support.etcd import etcd_cluster, etcd_cluster3, stopped  # noqa: F401 (fixtures)
from support.overlay import World, layout_of, start_helper, try_add, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=3)
    yield w
    w.cleanup()


@pytest.fixture
def world3(netns, tmp_path, etcd_cluster3):
    w = World(netns, tmp_path, etcd_cluster3, ttl=3)
    yield w
    for m in etcd_cluster3.members:  # (never leave a member stopped for the cluster's own cleanup)
        if m.alive:
            m.proc.send_signal(signal.SIGCONT)
    w.cleanup()


INTRUDER = lease.Record(ipaddress.ip_network("0.0.0.0/32"), "intruder", "192.0.2.77", "02:00:00:00:00:77")


def try_add_address(node, **keys):
    """try_add, and the pod's address (None when it failed)."""
    run = try_add(node, **keys)
    return run, (run.json["ips"][0]["address"].split("/")[0] if run.rc == 0 else None)


def in_subnet(address, subnet) -> bool:
    return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


def test_a_raised_lease_ttl_does_not_keep_the_short_etcd_lease(world):
    """The conflist's leaseTTL raised (3 -> 60 s) on a node that holds a lease: the ADD's
    converge kept the live etcd lease (granted for 3 s) while the state file said 60 s, so the
    node trusted its subnet for 30 s (fresh) / 60 s (not expired) after etcd dropped it; another
    node then claimed that subnet and this node's next ADD still allocated from it: two nodes on
    one subnet, with etcd up the whole time. Now the record is re-bound to a lease of the new
    TTL, and the subnet stays this node's alone."""
    a = world.add_node()
    a.add_pod()
    short = a.state()["lease"]
    world.ttl = 60
    a.add_pod()  # settings changed: converge
    held = a.state()
    assert held["settings"]["leaseTTL"] == 60
    client = world.cluster.client()
    wait_for(lambda: client.time_to_live(short) == -1, timeout=60, what="the 3 s etcd lease to expire")
    assert client.time_to_live(held["lease"]) > 3, "the node's record still stands on the 3 s lease"
    taken = lease.claim(client, layout_of(world), INTRUDER, ttl=60, last=held["subnet"])
    assert str(taken.subnet) != held["subnet"]
    run, address = try_add_address(a)
    assert run.rc == 0 and in_subnet(address, held["subnet"]), run


def test_a_stale_lease_under_the_store_down_stamp_is_not_another_nodes(world3):
    """Through the new path itself (state.store_down): a node with a resident helper, its
    leaseTTL raised 3 -> 30 s, is cut off from etcd (its only endpoint, one member of three,
    stopped) before the helper could notice its etcd lease is 3 s long. The rest of the cluster
    expires the lease and gives the subnet to another node; the helper stamps `unreachable`,
    and the node's ADD hands out addresses of the other node's subnet without asking etcd."""
    cluster = world3.cluster
    cut, rest = cluster.members[0], cluster.members[1:]
    only_cut = {"endpoints": [cut.client_url], "prefix": world3.prefix}
    a = world3.add_node()
    start_helper(a)
    a.add_pod(store=only_cut)
    world3.ttl = 30
    a.add_pod(store=only_cut)
    held = a.state()
    cut.proc.send_signal(signal.SIGSTOP)
    client = etcd.Client([m.client_url for m in rest], timeout=2)
    wait_for(lambda: _ttl(client, held["lease"]) == -1, timeout=60, what="the 3 s etcd lease to expire")
    taken = lease.claim(client, layout_of(world3), INTRUDER, ttl=120, last=held["subnet"])
    assert str(taken.subnet) == held["subnet"]
    wait_for(lambda: state.store_down(a.state(), 30) and not state.fresh(a.state(), 30), timeout=60,
             what="the keeper to find etcd down and the file stale")
    run, address = try_add_address(a, store=only_cut)
    cut.proc.send_signal(signal.SIGCONT)
    assert not in_subnet(address, taken.subnet), \
        f"node {a.name} gave {address} from {taken.subnet}, which etcd says the intruder holds"


def _ttl(client, lease_id):
    try:
        return client.time_to_live(lease_id)
    except etcd.EtcdError:
        return 0  # (the remaining members electing a leader)


def test_a_new_store_prefix_does_not_reuse_the_old_stores_lease(world):
    """The conflist moves the network to another etcd prefix (another cluster's namespace),
    where another node holds subnet S; this node held S under the old prefix. With etcd
    unreachable, the ADD's fallback compares only the subnet key of the settings and returns
    the old store's lease: this node allocates from S, which the new store gives the other."""
    world.ttl = 60
    a = world.add_node()
    a.add_pod()
    held = a.state()
    new_prefix = f"/{unique('cnmt')}"
    client = world.cluster.client()
    taken = lease.claim(client, layout_of(world, prefix=new_prefix), INTRUDER, ttl=120, last=held["subnet"])
    assert str(taken.subnet) == held["subnet"]
    world.cluster.kill(world.cluster.members[0])
    run, address = try_add_address(a, store={"endpoints": world.endpoints(), "prefix": new_prefix})
    assert not in_subnet(address, taken.subnet), \
        f"node {a.name} gave {address} from {taken.subnet}, which the new store gives the intruder"


def test_an_expired_lease_is_refused_even_under_the_store_down_stamp(world3):
    """Holds check: every member wedged past the lease TTL; the keeper's stamp is recent, but
    the lease is not confirmed for a whole TTL: the ADD must not take the cached subnet."""
    world3.ttl = 6
    a = world3.add_node()
    start_helper(a)
    a.add_pod()
    with stopped(*world3.cluster.members):
        wait_for(lambda: state.expired(a.state()) and state.store_down(a.state(), 6), timeout=60,
                 what="an expired lease under a recent stamp")
        run, address = try_add_address(a)
        assert run.rc != 0 and run.json["code"] == 11, run
    world3.cluster.wait_ready()
    wait_for(lambda: state.fresh(a.state(), 6), timeout=60, what="the lease confirmed again")


def test_the_stamp_does_not_outlive_etcds_return(world3):
    """Holds check: etcd wedged until the keeper stamps it down, then back; the stamp must not
    keep ADDs off etcd: the helper confirms (or re-claims) and the file drops the stamp's
    effect, and the node's subnet is still the one etcd records for it."""
    world3.ttl = 30
    a = world3.add_node()
    start_helper(a)
    a.add_pod()
    with stopped(*world3.cluster.members):
        wait_for(lambda: state.store_down(a.state(), 30), timeout=60, what="the keeper to find etcd down")
    world3.cluster.wait_ready()
    wait_for(lambda: not state.store_down(a.state(), 30) and state.fresh(a.state(), 30), timeout=60,
             what="the stamp superseded by a confirmation")
    held = a.state()
    kv = world3.cluster.client().get(layout_of(world3).key(ipaddress.ip_network(held["subnet"])))
    assert kv is not None and lease.Layout.parse(layout_of(world3), kv)[0].node == a.name
    run, address = try_add_address(a)
    assert run.rc == 0 and in_subnet(address, held["subnet"]), run
