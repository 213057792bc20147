"""The overlay's etcd client (issue 16 item 2's store) against a real etcd (Debian etcd-server):
kv, create-if-absent, leases, watch (PUT events have no `type` on the JSON gateway), failover
between members, and the network-namespace guard."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from cni_plugins.drivers.overlay import etcd
from support.common import unique
from support.etcd import Cluster, etcd_cluster, etcd_cluster3  # noqa: F401 (fixtures)


def test_put_get_range_delete(etcd_cluster):
    c = etcd_cluster.client()
    prefix = f"/{unique('t')}/".encode()
    assert c.get(prefix + b"a") is None
    rev = c.put(prefix + b"a", b"\x00\xffbinary")
    c.put(prefix + b"b", b"2")
    kv = c.get(prefix + b"a")
    assert kv.value == b"\x00\xffbinary" and kv.mod_revision == rev and kv.lease == 0
    kvs, revision = c.list_prefix(prefix)
    assert [k.key for k in kvs] == [prefix + b"a", prefix + b"b"] and revision >= rev
    assert c.delete(prefix + b"a") == 1
    assert c.delete(prefix + b"a") == 0
    assert [k.key for k in c.list_prefix(prefix)[0]] == [prefix + b"b"]


def test_create_if_absent_and_replace(etcd_cluster):
    c = etcd_cluster.client()
    key = f"/{unique('t')}".encode()
    assert c.create(key, b"first") == (True, None)
    created, current = c.create(key, b"second")
    assert not created and current.value == b"first"
    assert not c.replace(key, current.mod_revision + 100, b"x")
    assert c.replace(key, current.mod_revision, b"third")
    assert c.get(key).value == b"third"


def test_create_races_have_one_winner(etcd_cluster):
    """Ten threads create the same key at once: exactly one succeeds, all see its value."""
    key = f"/{unique('t')}".encode()
    results = []

    def claim(i):
        client = etcd_cluster.client()
        results.append((i, client.create(key, str(i).encode())))
        client.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, (created, _) in results if created]
    assert len(winners) == 1
    assert all(current.value == str(winners[0]).encode() for _, (created, current) in results if not created)


def test_lease_grant_keepalive_revoke(etcd_cluster):
    c = etcd_cluster.client()
    key = f"/{unique('t')}".encode()
    lease = c.grant(30)
    assert 0 < c.time_to_live(lease) <= 30
    c.put(key, b"v", lease=lease)
    assert c.get(key).lease == lease
    assert c.keepalive(lease) == 30
    c.revoke(lease)
    assert c.get(key) is None  # the lease's keys go with it
    assert c.keepalive(lease) == 0
    assert c.time_to_live(lease) == -1
    c.revoke(lease)  # twice: no error


def test_watch_sees_put_and_delete(etcd_cluster):
    """PUT events arrive without `type` (zero omitted); DELETE events carry it."""
    c = etcd_cluster.client()
    prefix = f"/{unique('t')}/".encode()
    _, revision = c.list_prefix(prefix)
    watch = c.watch(prefix, etcd.prefix_end(prefix), start_revision=revision + 1)
    c.put(prefix + b"x", b"1")
    c.put(b"/elsewhere", b"1")
    c.delete(prefix + b"x")
    seen = []
    for batch in watch:
        seen += [(e.kind, e.kv.key, e.kv.value) for e in batch]
        if len(seen) >= 2:
            break
    watch.close()
    assert seen == [("PUT", prefix + b"x", b"1"), ("DELETE", prefix + b"x", b"")]


def test_watch_of_a_compacted_revision_says_so(etcd_cluster):
    c = etcd_cluster.client()
    key = f"/{unique('t')}".encode()
    first = c.put(key, b"1")
    last = c.put(key, b"2")
    c.call("/v3/kv/compaction", {"revision": str(last), "physical": True})
    watch = c.watch(key, start_revision=first)
    with pytest.raises(etcd.Compacted):
        for _ in watch:
            pass
    watch.close()


def test_close_ends_a_blocked_watch(etcd_cluster):
    c = etcd_cluster.client()
    watch = c.watch(f"/{unique('t')}".encode())
    watch.set_timeout(None)
    done = []
    t = threading.Thread(target=lambda: done.append(list(_drain(watch))))
    t.start()
    watch.close()
    t.join(30)
    assert not t.is_alive()


def _drain(watch):
    try:
        yield from watch
    except etcd.EtcdError:
        return


def test_unreachable_is_unavailable(tmp_path):
    c = etcd.Client([f"unix://{tmp_path}/nothing:1", "http://127.0.0.1:1"], timeout=1)
    with pytest.raises(etcd.Unavailable) as err:
        c.get(b"/x")
    assert "nothing:1" in str(err.value) and "127.0.0.1:1" in str(err.value)


@pytest.mark.parametrize("endpoint", ["127.0.0.1:2379", "ftp://h:1", "unix://relative", "http://host"])
def test_bad_endpoint_is_refused(endpoint):
    with pytest.raises(ValueError):
        etcd.Client([endpoint])


def test_a_killed_member_costs_no_call(etcd_cluster3):
    """With one of three members killed, every call still succeeds (the client moves on to the
    next endpoint; the remaining two keep a quorum)."""
    c = etcd_cluster3.client(timeout=3)
    prefix = f"/{unique('t')}/".encode()
    c.put(prefix + b"0", b"0")
    etcd_cluster3.kill(etcd_cluster3.members[0])
    for i in range(1, 20):
        c.put(prefix + str(i).encode(), b"v")
    assert len(c.list_prefix(prefix)[0]) == 20


def test_no_etcd_from_another_netns(etcd_cluster):
    """A thread that entered another network namespace (a container's) cannot reach etcd
    through the client: the connection would start from the container."""
    from cni_plugins.linux import netns as nsmod

    c = etcd_cluster.client()
    name = unique("ns")
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        box = {}

        def inside():
            fd = nsmod.open_netns(f"/run/netns/{name}")
            try:
                nsmod.setns(fd)
                c.get(b"/x")
            except Exception as exc:
                box["error"] = exc
            finally:
                os.close(fd)

        t = threading.Thread(target=inside)
        t.start()
        t.join()
        assert isinstance(box.get("error"), etcd.WrongNamespace)
        assert c.get(b"/x") is None  # from the host's: fine
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_cluster_fixture_cleans_up():
    cluster = Cluster(1).start()
    root = cluster.root
    proc = cluster.members[0].proc
    cluster.stop()
    assert proc.poll() is not None and not os.path.exists(root)
