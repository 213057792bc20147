"""cnm-overlay under attack (issue 16, hostile review): two machines on one subnet, hostile
records in etcd, forged log lines. Simulated nodes (a netns each on an
underlay bridge the test makes) and throwaway etcd clusters, as in test_overlay*.py."""

from __future__ import annotations

import dataclasses
import http.client
import ipaddress
import json
import signal

import pytest

from cni_plugins.drivers.overlay import etcd, lease
from support.common import unique
from support.etcd import etcd_cluster, etcd_cluster3  # noqa: F401 (fixtures)
from support.overlay import World, helper_log, mesh_of, start_helper, stop_helper, wait_for


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


# ---- second attack pass ------------------------------------------------------------------------

def test_a_renamed_node_keeps_one_record_for_its_vtep(world):
    """Issue 16, attack pass item 1: a node renamed (nodeName changed, same machine and VTEP)
    claimed a second subnet while its old record lived on until the old lease's TTL: two
    records claimed one VTEP IP. The record the machine proves its own (its machine id and
    VTEP IP) now follows the rename: one record, the same subnet, the new name."""
    world.ttl = 60  # (the old lease outlives the test)
    a = world.add_node()
    a.add_pod()
    before = a.state()
    a.add_pod(nodeName="renamed")
    records, _, _ = lease.read_all(world.cluster.client(), layout_of(world))
    on_vtep = [r for r in records if r.vtep_ip == a.address]
    assert [(r.node, str(r.subnet)) for r in on_vtep] == [("renamed", before["subnet"])], records
    assert a.state()["node"] == "renamed" and a.state()["subnet"] == before["subnet"]


def test_a_stale_record_of_this_machine_is_released(etcd_cluster):
    """Issue 16, attack pass item 1: a second record this machine wrote under a former name
    (same machine id, same VTEP IP) is deleted and its lease revoked when the node claims."""
    c, lay = etcd_cluster.client(), lease.Layout(f"/{unique('p')}", unique("net"),
                                                 ipaddress.ip_network("10.244.0.0/16"), 24)
    me = "ab" * 16
    old = lease.claim(c, lay, lease.Record(lay.subnet, "old", "192.0.2.1", "02:00:00:00:00:01", machine=me), ttl=30)
    older = lease.claim(c, lay, lease.Record(lay.subnet, "older", "192.0.2.1", "02:00:00:00:00:02", machine=me),
                        ttl=30, last=str(old.subnet))
    assert older.subnet == old.subnet  # (it follows the rename too)
    stale = lease.Record(ipaddress.ip_network("10.244.99.0/24"), "oldest", "192.0.2.1", "02:00:00:00:00:03",
                         machine=me)
    stale_lease = c.grant(30)
    c.put(lay.key(stale.subnet), stale.value(), lease=stale_lease)
    now = lease.claim(c, lay, lease.Record(lay.subnet, "new", "192.0.2.1", "02:00:00:00:00:04", machine=me), ttl=30,
                      last=str(old.subnet))
    records, _, _ = lease.read_all(c, lay)
    assert [(r.node, r.subnet) for r in records] == [("new", old.subnet)] and now.subnet == old.subnet
    assert c.time_to_live(stale_lease) == -1


@pytest.mark.parametrize("machine, vtep", [
    ("", "192.0.2.1"),  # a record from before machine ids: nothing proves it ours
    ("cd" * 16, "192.0.2.1"),  # another machine (our VTEP IP reused)
    ("ab" * 16, "192.0.2.2"),  # our id on another VTEP: a cloned store on another machine
])
def test_a_record_another_machine_may_hold_is_never_released(etcd_cluster, machine, vtep):
    """Issue 16, attack pass item 1: only a record this machine proves its own follows a
    rename; one with our VTEP IP or our id alone stays on its live lease."""
    c, lay = etcd_cluster.client(), lease.Layout(f"/{unique('p')}", unique("net"),
                                                 ipaddress.ip_network("10.244.0.0/16"), 24)
    theirs = lease.claim(c, lay, lease.Record(lay.subnet, "other", vtep, "02:00:00:00:00:09", machine=machine),
                         ttl=30)
    mine = lease.claim(c, lay, lease.Record(lay.subnet, "me", "192.0.2.1", "02:00:00:00:00:01", machine="ab" * 16),
                       ttl=30)
    assert mine.subnet != theirs.subnet
    assert lay.parse(c.get(lay.key(theirs.subnet)))[0].node == "other" and c.time_to_live(theirs.lease) > 0


def test_duplicate_vtep_macs_do_not_overwrite_the_first_nodes_fdb_entry(world):
    """Issue 16, attack pass item 2: two records with one VTEP MAC (a cloned or hostile record)
    each programmed the MAC's FDB entry, the second over the first: the first node's traffic
    went to the second's VTEP. The record created first keeps the MAC; the other is not
    programmed (in the helper's watch and in a converge), logged, and shown by inspect and
    doctor; when the first goes, the second is programmed."""
    a = world.add_node()
    start_helper(a)
    a.add_pod()
    client = world.cluster.client()
    lay = layout_of(world)
    first, second = ipaddress.ip_network("10.250.200.0/24"), ipaddress.ip_network("10.250.201.0/24")
    client.put(lay.key(first), record(node="first", vtep="192.0.2.10", mac="02:00:00:00:00:aa"))
    wait_for(lambda: mesh_of(a).get(str(first)) == "192.0.2.10", what="the first record programmed")
    client.put(lay.key(second), record(node="second", vtep="192.0.2.11", mac="02:00:00:00:00:aa"))
    wait_for(lambda: "duplicate VTEP MAC" in helper_log(a), what="the helper to report the duplicate MAC")
    assert mesh_of(a) == {str(first): "192.0.2.10"}, mesh_of(a)
    b = world.add_node()  # (no helper: its ADD converges from a fresh list)
    b.add_pod()
    assert mesh_of(b) == {str(first): "192.0.2.10", a.state()["subnet"]: a.address}, mesh_of(b)
    view = json.loads(cnmctl(a, "network", "inspect", world.network).stdout)[0]["Overlay"]
    assert {n["Node"]: n["Kernel"] for n in view["Nodes"]}["second"] == "duplicate MAC", view
    assert "one VTEP MAC" in cnmctl(a, "doctor").stdout
    client.delete(lay.key(first))
    wait_for(lambda: mesh_of(a).get(str(second)) == "192.0.2.11", what="the second record programmed")


def cnmctl(node, *args):
    import os
    import subprocess

    from support.common import BIN

    env = dict(node.env, NETCONFPATH=str(node.dir / "net.d"))
    env.pop("CNM_HELPER_SOCKET", None)
    return subprocess.run(["nsenter", f"--net={node.host}", "--", os.path.join(BIN, "cnmctl"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


class RacedClient(etcd.Client):
    """A real client whose first compare-and-swap (or create) loses to another writer: the
    key is written by another client just before it (the race etcd resolves). It notes the
    leases it was granted."""

    def __init__(self, endpoints, **kw):
        super().__init__(endpoints, **kw)
        self.granted: list[int] = []
        self.raced = False

    def grant(self, ttl: int) -> int:
        lease_id = super().grant(ttl)
        self.granted.append(lease_id)
        return lease_id

    def _race(self, key: bytes) -> None:
        if not self.raced:
            self.raced = True
            etcd.Client(self.endpoints).put(key, record(node="thief", vtep="192.0.2.99", mac="02:00:00:00:00:99"))

    def replace(self, key, mod_revision, value, lease=0):
        self._race(key)
        return super().replace(key, mod_revision, value, lease)

    def create(self, key, value, lease=0):
        self._race(key)
        return super().create(key, value, lease)


def test_a_lease_granted_for_a_failed_rebind_is_revoked(etcd_cluster):
    """Issue 16, attack pass item 3: the node's record outlived its lease; re-binding it to a
    new lease lost a compare-and-swap, and that new lease lived out its TTL in etcd for
    nothing (one per failed re-bind). It is revoked; the lease the node ends on lives."""
    lay = lease.Layout(f"/{unique('p')}", unique("net"), ipaddress.ip_network("10.244.0.0/16"), 24)
    plain = etcd_cluster.client()
    mine = lease.Record(lay.subnet, "n1", "192.0.2.1", "02:00:00:00:00:01")
    plain.put(lay.key(ipaddress.ip_network("10.244.5.0/24")), dataclasses.replace(
        mine, subnet=ipaddress.ip_network("10.244.5.0/24")).value())  # (on no lease: to be re-bound)
    client = RacedClient(etcd_cluster.endpoints)
    got = lease.claim(client, lay, mine, ttl=30)
    assert client.raced and got.lease in client.granted and len(client.granted) >= 2
    assert plain.time_to_live(got.lease) > 0
    assert [plain.time_to_live(x) for x in client.granted if x != got.lease] == [-1] * (len(client.granted) - 1)


def test_a_lease_granted_for_a_lost_create_is_revoked(etcd_cluster):
    """Issue 16, attack pass item 3: the only free subnet went to another node between the
    list and the create: the claim fails (exhausted) and its new lease is revoked, not left
    to expire."""
    lay = lease.Layout(f"/{unique('p')}", unique("net"), ipaddress.ip_network("10.97.0.0/24"), 24)
    client = RacedClient(etcd_cluster.endpoints)
    with pytest.raises(lease.Exhausted):
        lease.claim(client, lay, lease.Record(lay.subnet, "n1", "192.0.2.1", "02:00:00:00:00:01"), ttl=30)
    assert client.granted and [etcd_cluster.client().time_to_live(x) for x in client.granted] == [-1]


def fill(client, directory: bytes, mib: int) -> int:
    """`mib` keys of 1 MiB under `directory`; the revision before them."""
    before = client.put(directory + b"!before", b"x")
    for i in range(mib):
        client.put(directory + b"!big%03d" % i, b"x" * (1 << 20))
    return before


def test_a_huge_prefix_is_refused_not_swallowed(world):
    """Issue 16, attack pass item 4: the client took a list or a watch message of any size
    (a prefix filled with 40 MiB: the helper read it all into memory, and the watch buffer was
    parsed again on every chunk). Both are capped: refused whole with a clear error; the
    helper logs it, keeps running and keeps the kernel's mesh as it was."""
    world.ttl = 60  # (b, without a helper, keeps its lease while etcd fills)
    a = world.add_node()
    start_helper(a)
    a.add_pod()
    b = world.add_node()
    b.add_pod()
    wait_for(lambda: b.state()["subnet"] in mesh_of(a), what="a to route to b")
    client = world.cluster.client(timeout=60)
    lay = layout_of(world)
    before = fill(client, lay.directory, 40)
    with pytest.raises(etcd.EtcdError, match="MiB"):
        client.list_prefix(lay.directory)
    watch = client.watch(lay.directory, etcd.prefix_end(lay.directory), start_revision=before)
    watch.set_timeout(60)
    try:
        with pytest.raises(etcd.EtcdError, match="MiB"):
            for _ in watch:
                pass
    finally:
        watch.close()
    stop_helper(a)
    start_helper(a)
    wait_for(lambda: "refused" in helper_log(a), timeout=60, what="the helper to refuse the list")
    assert a.helper.poll() is None and b.state()["subnet"] in mesh_of(a)
