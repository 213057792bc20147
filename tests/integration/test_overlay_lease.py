"""Per-node subnet leases in etcd (issue 16 item 2) against a real etcd: create-if-absent,
a restarted node takes its own subnet back, exhaustion, concurrent claims, hostile records."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading

import pytest

from cni_plugins.drivers.overlay import etcd, lease
from support.common import unique
from support.etcd import etcd_cluster  # noqa: F401 (fixture)


def layout(subnet="10.244.0.0/16", length=24) -> lease.Layout:
    return lease.Layout(f"/{unique('p')}", unique("net"), ipaddress.ip_network(subnet), length)


def node(name: str, ip: str = "192.0.2.1", mac: str = "02:00:00:00:00:01") -> lease.Record:
    return lease.Record(ipaddress.ip_network("0.0.0.0/32"), name, ip, mac)


def test_claim_writes_a_record_on_a_lease(etcd_cluster):
    c, lay = etcd_cluster.client(), layout()
    got = lease.claim(c, lay, node("n1"), ttl=30)
    assert got.subnet.prefixlen == 24 and got.subnet.subnet_of(lay.subnet)
    kv = c.get(lay.key(got.subnet))
    assert kv.lease == got.lease and 0 < c.time_to_live(got.lease) <= 30
    parsed, why = lay.parse(kv)
    assert parsed == got and why == ""


def test_a_restarted_node_takes_its_own_subnet_back(etcd_cluster):
    """While its record lives: the same record (even without knowing the lease id); after
    its lease is gone: the subnet it held last, when still free."""
    c, lay = etcd_cluster.client(), layout()
    first = lease.claim(c, lay, node("n1"), ttl=30)
    lease.claim(c, lay, node("n2"), ttl=30)
    again = lease.claim(c, lay, node("n1"), ttl=30)  # a restart: no lease id known
    assert again.subnet == first.subnet and again.lease == first.lease
    c.revoke(first.lease)
    assert c.get(lay.key(first.subnet)) is None
    back = lease.claim(c, lay, node("n1"), ttl=30, last=str(first.subnet))
    assert back.subnet == first.subnet and back.lease != first.lease


def test_a_new_vtep_is_published(etcd_cluster):
    c, lay = etcd_cluster.client(), layout()
    first = lease.claim(c, lay, node("n1", mac="02:00:00:00:00:01"), ttl=30)
    again = lease.claim(c, lay, node("n1", mac="02:00:00:00:00:02"), ttl=30, lease=first.lease)
    assert again.subnet == first.subnet and again.vtep_mac == "02:00:00:00:00:02"
    assert lay.parse(c.get(lay.key(first.subnet)))[0].vtep_mac == "02:00:00:00:00:02"


def test_exhaustion_says_so(etcd_cluster):
    c, lay = etcd_cluster.client(), layout("10.99.0.0/23", 24)
    a = lease.claim(c, lay, node("a"), ttl=30)
    b = lease.claim(c, lay, node("b"), ttl=30)
    assert {a.subnet, b.subnet} == set(lay.subnets())
    with pytest.raises(lease.Exhausted):
        lease.claim(c, lay, node("c"), ttl=30)
    assert len(c.list_prefix(lay.directory)[0]) == 2


def test_ten_nodes_claiming_at_once_get_ten_subnets(etcd_cluster):
    """Issue 16 item 7: 10 simulated nodes at once: 10 distinct subnets (a /20: 16 to choose
    from, so they collide often)."""
    lay = layout("10.98.0.0/20", 24)
    got, errors = {}, []
    barrier = threading.Barrier(10)

    def run(i):
        client = etcd_cluster.client()
        try:
            barrier.wait()
            got[i] = lease.claim(client, lay, node(f"node{i}", ip=f"192.0.2.{i + 1}"), ttl=30)
        except Exception as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({r.subnet for r in got.values()}) == 10
    records, skipped, _ = lease.read_all(etcd_cluster.client(), lay)
    assert sorted(r.node for r in records) == sorted(f"node{i}" for i in range(10)) and not skipped


@pytest.mark.parametrize("key, value, why", [
    ("10.1.0.0-24", b'{"node":"x","vtepIP":"192.0.2.9","vtepMAC":"02:00:00:00:00:09"}', "not a /24 of"),
    ("10.244.7.0-25", b'{"node":"x","vtepIP":"192.0.2.9","vtepMAC":"02:00:00:00:00:09"}', "not a /24 of"),
    ("garbage", b'{"node":"x","vtepIP":"192.0.2.9","vtepMAC":"02:00:00:00:00:09"}', "does not name a subnet"),
    ("10.244.7.0-24", b"{not json", "not a JSON record"),
    ("10.244.7.0-24", b'{"node":"x","vtepIP":"10.244.3.1","vtepMAC":"02:00:00:00:00:09"}', "own subnet"),
    ("10.244.7.0-24", b'{"node":"x","vtepIP":"192.0.2.9","vtepMAC":"01:00:00:00:00:09"}', "unicast MAC"),
    ("10.244.7.0-24", b'{"node":"x","vtepIP":"192.0.2.9","vtepMAC":"02:00:00:00:00:09","pad":"' + b"x" * 5000 + b'"}',
     "bytes"),
    ("10.244.7.0-24", b'["node"]', "not a JSON record"),
])
def test_hostile_records_are_skipped(etcd_cluster, key, value, why):
    """Issue 16 item 5: a record with hostile content is skipped with a reason, never fatal;
    its subnet is not claimed over it."""
    c, lay = etcd_cluster.client(), layout()
    c.put(lay.directory + key.encode(), value)
    records, skipped, _ = lease.read_all(c, lay)
    assert records == [] and len(skipped) == 1 and why in skipped[0]
    mine = lease.claim(c, lay, node("n1"), ttl=30, last="10.244.7.0/24")
    assert lay.key(mine.subnet) != lay.directory + key.encode()


def test_release_gives_the_subnet_up(etcd_cluster):
    c, lay = etcd_cluster.client(), layout()
    got = lease.claim(c, lay, node("n1"), ttl=30)
    lease.release(c, lay, got)
    assert c.get(lay.key(got.subnet)) is None and c.time_to_live(got.lease) == -1


def test_node_identity(tmp_path):
    assert lease.node_identity("n1") == "n1"
    f = tmp_path / "machine-id"
    f.write_text("abc123\n")
    assert lease.node_identity("", str(f)) == "abc123"
    f.write_text("")
    with pytest.raises(ValueError):
        lease.node_identity("", str(f))


def test_unreachable_store_raises_unavailable(tmp_path):
    c = etcd.Client([f"unix://{tmp_path}/none:1"], timeout=1)
    with pytest.raises(etcd.Unavailable):
        lease.claim(c, layout(), node("n1"), ttl=30)


def test_a_twin_that_loses_the_create_race_does_not_take_the_winners_record(etcd_cluster):
    """Attack on issue 16's lease fixes: two machines given one nodeName pick the same subnet
    (the choice hashes the name) and create at once. The loser's create found the winner's
    record, saw its own node name in it and returned it as "our own create, retried": both
    machines then held one subnet, on the winner's lease and VTEP. Only a record on the loser's
    own lease and VTEP is its retried create; the winner's is a live lease of another VTEP:
    Conflict, as when the record is found by listing."""
    c, lay = etcd_cluster.client(), layout()
    before = c.list_prefix(lay.directory)[0], []  # both listed the directory empty
    a = lease.claim(c, lay, dataclasses.replace(node("twin", "192.0.2.1"), machine="a" * 32), ttl=30, listed=before)
    with pytest.raises(lease.Conflict):
        lease.claim(c, lay, dataclasses.replace(node("twin", "192.0.2.2"), machine="b" * 32), ttl=30, listed=before)
    kv = c.get(lay.key(a.subnet))
    assert lay.parse(kv)[0] == a  # the winner's record stands, untouched
    assert [k.key for k in c.list_prefix(lay.directory)[0]] == [lay.key(a.subnet)]
