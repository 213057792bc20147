"""cnm-macvlan (issue 15) on a simulated physical network: a test "node" netns with a veth
uplink (the master) whose other end sits in a "LAN" netns holding the peer's address.
Every test asserts on the kernel (links, modes, MACs, reachability, the peer's neighbour
table) and on the leases and records left."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from bridge_support import sh, with_prev
from conftest import exec_plugin, unique
from macvlan_support import PEER, MacvlanLab, address_of


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return MacvlanLab(netns, cnm_env, tmp_path)


def mac_of(result: dict) -> str:
    return result["interfaces"][0]["mac"]


def test_bridge_mode_reaches_peer_and_each_other_and_the_peer_learns_the_mac(lab):
    """Item 5: bridge mode, two containers reach each other and a LAN peer; the peer's neighbour
    table learns the container's MAC (the one the result reports)."""
    conf = lab.conf()
    c1, c2 = lab.container(), lab.container()
    r1, r2 = lab.add(conf, c1, cid="c1"), lab.add(conf, c2, cid="c2")
    link = lab.link("eth0", c1)
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "bridge"
    assert link["address"] == mac_of(r1) and r1["interfaces"][0]["sandbox"] == c1
    assert lab.ping(c1, PEER) and lab.ping(c2, PEER)
    assert lab.ping(c1, address_of(r2)) and lab.ping(c2, address_of(r1))
    assert lab.neighbours().get(address_of(r1)) == mac_of(r1)
    # arp_notify on, as the reference plugin sets it (gratuitous ARP when the link comes up)
    assert lab.sysctl("net.ipv4.conf.eth0.arp_notify", c1) == "1"
    for c, cid, r in ((c1, "c1", r1), (c2, "c2", r2)):
        assert lab.run("CHECK", with_prev(conf, r), c, cid=cid).rc == 0
        assert lab.run("DEL", conf, c, cid=cid).rc == 0
    lab.assert_nothing_left(c1, c2)


@pytest.mark.parametrize("mode", ["private", "vepa"])
def test_private_and_vepa_block_container_to_container_not_the_peer(lab, mode):
    """Item 5: private mode blocks container-to-container traffic but not the peer; vepa sends
    it to the uplink, whose peer (a plain veth end) does not hairpin it back."""
    conf = lab.conf(mode=mode)
    c1, c2 = lab.container(), lab.container()
    r1, r2 = lab.add(conf, c1, cid="c1"), lab.add(conf, c2, cid="c2")
    assert lab.link("eth0", c1)["linkinfo"]["info_data"]["mode"] == mode
    assert lab.ping(c1, PEER) and lab.ping(c2, PEER)
    assert not lab.ping(c1, address_of(r2))
    assert lab.run("CHECK", with_prev(conf, r1), c1, cid="c1").rc == 0
    assert lab.run("DEL", conf, c1, cid="c1").rc == 0 and lab.run("DEL", conf, c2, cid="c2").rc == 0
    lab.assert_nothing_left(c1, c2)


def test_passthru_one_endpoint_per_master_second_refused(lab):
    """Item 2: passthru gives one macvlan the master (its MAC is the master's); a second on the
    same master is refused with a clear error, and leaves neither link nor lease."""
    conf = lab.conf(mode="passthru")
    c1, c2 = lab.container(), lab.container()
    r1 = lab.add(conf, c1, cid="c1")
    assert mac_of(r1) == lab.link(lab.master)["address"]
    assert lab.ping(c1, PEER)
    second = lab.run("ADD", conf, c2, cid="c2")
    assert second.rc != 0 and second.json["code"] == 102, second
    assert "passthru" in second.json["details"], second
    assert lab.macvlans(c2) == [] and lab.macvlans() == []
    assert len(lab.leases()) == 1
    # a bridge-mode network on the same master is refused as well, by name
    other = dict(lab.conf(mode="bridge"), name=unique("mvo", 30))
    third = lab.run("ADD", other, c2, cid="c3")
    assert third.rc != 0 and third.json["code"] == 102 and "passthru" in third.json["details"], third
    assert lab.run("DEL", conf, c1, cid="c1").rc == 0
    lab.assert_nothing_left(c1, c2)


def test_mac_stable_for_the_endpoint_and_requested_ones_honoured(lab):
    """Item 5: without a requested MAC the endpoint's MAC is the same on every ADD of the same
    attachment; runtimeConfig.mac / CNI_ARGS MAC / the `mac` key are applied."""
    conf = lab.conf()
    c = lab.container()
    first = mac_of(lab.add(conf, c))
    assert lab.run("DEL", conf, c).rc == 0
    assert mac_of(lab.add(conf, c)) == first
    assert lab.run("DEL", conf, c).rc == 0
    for how, conf2, args in (("runtimeConfig", dict(conf, runtimeConfig={"mac": "02:aa:bb:cc:dd:01"}), ""),
                             ("CNI_ARGS", conf, "IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:02"),
                             ("mac key", dict(conf, mac="02:AA:BB:CC:DD:03"), "")):
        r = lab.run("ADD", conf2, c, args=args)
        assert r.rc == 0, (how, r)
        assert lab.link("eth0", c)["address"] == mac_of(r.json), how
        assert mac_of(r.json).startswith("02:aa:bb:cc:dd:0"), how
        assert lab.run("DEL", conf2, c, args=args).rc == 0
    lab.assert_nothing_left(c)


def test_parallel_adds_get_unique_macs_and_addresses_then_parallel_dels_leave_nothing(lab):
    """Item 5: 50 parallel ADDs: unique IPs and MACs on the kernel's links; 50 parallel DELs."""
    conf = lab.conf(ipam=lab.ipam("10.251.0.0/23", rangeStart="10.251.0.10"))
    pods = [(lab.container(), f"p{i}") for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: lab.run("ADD", conf, p[0], cid=p[1]), pods))
    assert all(r.rc == 0 for r in results), [r for r in results if r.rc]
    macs = {lab.link("eth0", c)["address"] for c, _ in pods}
    assert len(macs) == 50
    assert len({address_of(r.json) for r in results}) == 50
    assert lab.ping(pods[0][0], PEER) and lab.ping(pods[-1][0], address_of(results[0].json))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        dels = list(pool.map(lambda p: lab.run("DEL", conf, p[0], cid=p[1]), pods))
    assert all(r.rc == 0 for r in dels), [r for r in dels if r.rc]
    lab.assert_nothing_left(*[c for c, _ in pods])


def test_mtu_bcqueuelen_and_no_ipam(lab):
    """Item 1: mtu (≤ the master's) and bcqueuelen applied; no ipam: an L2-only interface, up."""
    sh("ip", "link", "set", lab.master, "mtu", "1400", ns=lab.host)
    c = lab.container()
    conf = lab.conf(mtu=1300, bcqueuelen=123)
    lab.add(conf, c)
    link = lab.link("eth0", c)
    assert link["mtu"] == 1300 and link["linkinfo"]["info_data"]["bcqueuelen"] == 123
    assert lab.run("DEL", conf, c).rc == 0
    l2 = lab.conf(ipam={})
    r = lab.add(l2, c)
    assert r.get("ips", []) == [] and lab.link("eth0", c)["mtu"] == 1400
    assert "UP" in lab.link("eth0", c)["flags"]
    assert lab.run("CHECK", with_prev(l2, r), c).rc == 0
    assert lab.run("DEL", l2, c).rc == 0
    lab.assert_nothing_left(c)


def test_default_master_is_the_default_route_interface(lab):
    """Item 1: master defaults to the interface of the node's default route."""
    sh("ip", "addr", "add", "10.251.0.2/24", "dev", lab.master, ns=lab.host)
    sh("ip", "route", "add", "default", "via", PEER, ns=lab.host)
    conf = lab.conf()
    del conf["master"]
    c = lab.container()
    lab.add(conf, c)
    assert lab.link("eth0", c)["link_index"] == lab.link(lab.master)["ifindex"]
    assert lab.ping(c, PEER)
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)


def test_two_networks_on_one_master_coexist(lab):
    """Item 2: several networks (different subnets) on one master."""
    sh("ip", "addr", "add", "10.252.0.1/24", "dev", lab.links(lab.lan) and _lan_end(lab), ns=lab.lan)
    a = lab.conf()
    b = dict(lab.conf(ipam=lab.ipam("10.252.0.0/24")), name=unique("mvb", 30))
    c = lab.container()
    lab.add(a, c, ifname="eth0")
    lab.add(b, c, ifname="eth1")
    assert lab.ping(c, PEER) and lab.ping(c, "10.252.0.1")
    assert lab.run("DEL", b, c, ifname="eth1").rc == 0 and lab.run("DEL", a, c).rc == 0
    lab.assert_nothing_left(c)


def _lan_end(lab) -> str:
    return next(n for n in lab.links(lab.lan) if n != "lo")


def test_link_in_container(lab):
    """Item 1: linkInContainer: the master is a link of the container's netns."""
    c = lab.container()
    inner, lan_end = unique("in"), unique("ln")
    sh("ip", "link", "add", inner, "type", "veth", "peer", "name", lan_end, ns=lab.host)
    sh("ip", "link", "set", inner, "netns", c, ns=lab.host)
    sh("ip", "link", "set", lan_end, "netns", lab.lan, ns=lab.host)
    sh("ip", "link", "set", inner, "up", ns=c)
    sh("ip", "link", "set", lan_end, "up", ns=lab.lan)
    sh("ip", "addr", "add", "10.253.0.1/24", "dev", lan_end, ns=lab.lan)
    conf = lab.conf(master=inner, linkInContainer=True, ipam=lab.ipam("10.253.0.0/24"))
    r = lab.add(conf, c)
    assert lab.link("eth0", c)["link"] == inner
    assert lab.ping(c, "10.253.0.1")
    assert lab.run("CHECK", with_prev(conf, r), c).rc == 0
    assert lab.run("DEL", conf, c).rc == 0
    assert lab.macvlans(c) == [] and lab.leases() == []


def test_del_with_netns_gone_master_gone_no_record(lab, netns):
    """Item 2: DEL works with the netns gone, the master gone, and with no record (twice)."""
    conf = lab.conf()
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, c1, cid="c1")
    lab.add(conf, c2, cid="c2")
    sh("ip", "netns", "del", c1.rsplit("/", 1)[1])
    assert lab.run("DEL", conf, c1, cid="c1").rc == 0
    sh("ip", "link", "del", lab.master, ns=lab.host)
    assert lab.macvlans(c2) == []  # the kernel removed it with its master
    assert lab.run("DEL", conf, c2, cid="c2").rc == 0
    assert lab.run("DEL", conf, c2, cid="c2").rc == 0  # no record
    assert lab.run("DEL", conf, "", cid="c9").rc == 0  # never added, no netns
    assert lab.leases() == [] and lab.endpoints() == []


def test_del_without_record_removes_only_our_tagged_link(lab):
    """DEL with no record removes the container's interface only when it carries our owner tag:
    an eth0 someone else made stays."""
    c = lab.container()
    sh("ip", "link", "add", "link", lab.master, "name", "eth0", "type", "macvlan", ns=lab.host)
    sh("ip", "link", "set", "eth0", "netns", c, ns=lab.host)
    conf = lab.conf()
    add = lab.run("ADD", conf, c)
    assert add.rc != 0 and add.json["code"] == 102 and "eth0" in add.json["msg"], add
    assert lab.run("DEL", conf, c).rc == 0
    assert lab.macvlans(c) == ["eth0"] and lab.macvlans() == [] and lab.leases() == []


def test_check_finds_what_changed(lab):
    """Item 2: CHECK compares kind, mode, MAC, addresses, routes with the kernel (code 103)."""
    conf = lab.conf(ipam=lab.ipam(SUBNET := "10.251.0.0/24", routes=[{"dst": "10.99.0.0/16"}],
                                  rangeStart="10.251.0.10"))
    c = lab.container()
    r = lab.add(conf, c)
    prev = with_prev(conf, r)
    assert lab.run("CHECK", prev, c).rc == 0
    assert lab.run("CHECK", dict(prev, mode="private"), c).json["code"] == 103
    sh("ip", "route", "del", "10.99.0.0/16", ns=c)
    bad = lab.run("CHECK", prev, c)
    assert bad.json["code"] == 103 and "route" in bad.json["msg"], bad
    sh("ip", "link", "set", "eth0", "address", "02:11:22:33:44:55", ns=c)
    bad = lab.run("CHECK", prev, c)
    assert bad.json["code"] == 103 and "Mac" in bad.json["msg"], bad
    sh("ip", "link", "set", "eth0", "address", mac_of(r), ns=c)
    sh("ip", "link", "set", "eth0", "mtu", "1400", ns=c)
    bad = lab.run("CHECK", prev, c)
    assert bad.json["code"] == 103 and "MTU" in bad.json["msg"], bad
    sh("ip", "addr", "flush", "dev", "eth0", ns=c)
    assert lab.run("CHECK", prev, c).json["code"] == 103
    assert lab.run("CHECK", conf, c).json["code"] == 103  # no prevResult
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)
    assert SUBNET


def test_status_master_missing_or_down(lab):
    """Item 2: STATUS is 50 when the master does not exist or is down."""
    conf = lab.conf(version="1.1.0")
    assert lab.run("STATUS", conf).rc == 0
    sh("ip", "link", "set", lab.master, "down", ns=lab.host)
    down = lab.run("STATUS", conf)
    assert down.json["code"] == 50 and "down" in down.json["msg"], down
    missing = lab.run("STATUS", dict(conf, master="nosuch0"))
    assert missing.json["code"] == 50 and "nosuch0" in missing.json["msg"], missing


def test_gc_with_valid_attachments(lab):
    """Item 2: GC removes the attachments not listed (link and lease), keeps the listed one."""
    conf = lab.conf(version="1.1.0")
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, c1, cid="c1")
    lab.add(conf, c2, cid="c2")
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert lab.run("GC", gc).rc == 0
    assert lab.macvlans(c1) == ["eth0"] and lab.macvlans(c2) == []
    assert len(lab.leases()) == 1 and len(lab.endpoints()) == 1
    assert lab.run("DEL", conf, c1, cid="c1").rc == 0
    lab.assert_nothing_left(c1, c2)


def test_host_netns_guard(lab):
    """Item 2: an ADD into the host's own netns is refused (code 8), nothing made."""
    r = lab.run("ADD", lab.conf(), lab.host)
    assert r.rc != 0 and r.json["code"] == 8, r
    lab.assert_nothing_left()


def _bridge_port(lab) -> str:
    port, peer = unique("bp"), unique("bq")
    br = unique("br")
    sh("ip", "link", "add", br, "type", "bridge", ns=lab.host)
    sh("ip", "link", "add", port, "type", "veth", "peer", "name", peer, ns=lab.host)
    sh("ip", "link", "set", port, "master", br, ns=lab.host)
    return port


def _passthru_macvlan(lab) -> str:
    uplink = lab.add_uplink(peer="10.254.0.1")
    name = unique("pt")
    sh("ip", "link", "add", "link", uplink, "name", name, "type", "macvlan", "mode", "passthru", ns=lab.host)
    return name


def _other_netns_master(lab) -> str:
    other = lab.netns("cnmo")
    name = unique("ot")
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", unique("oq"), ns=lab.host)
    sh("ip", "link", "set", name, "netns", other, ns=lab.host)
    return name


BAD = {
    # name: (how to make the config, expected code, a word the error must hold)
    "unknown-master": (lambda lab: lab.conf(master="nosuch0"), 7, "nosuch0"),
    "master-in-another-netns": (lambda lab: lab.conf(master=_other_netns_master(lab)), 7, "not found"),
    "master-is-bridge-port": (lambda lab: lab.conf(master=_bridge_port(lab)), 7, "port"),
    "master-is-passthru-macvlan": (lambda lab: lab.conf(master=_passthru_macvlan(lab)), 7, "passthru"),
    "multicast-mac": (lambda lab: lab.conf(runtimeConfig={"mac": "01:00:5e:00:00:01"}), 7, "multicast"),
    "zero-mac": (lambda lab: lab.conf(mac="00:00:00:00:00:00"), 7, "all-zero"),
    "mtu-above-master": (lambda lab: lab.conf(mtu=9000), 7, "MTU"),
    "unknown-mode": (lambda lab: lab.conf(mode="source"), 7, "mode"),
    "bad-master-name": (lambda lab: lab.conf(master="../x"), 7, "master"),
    # (was code 102 "cannot take another macvlan ... passthru", a wrong lead)
    "master-not-ethernet": (lambda lab: lab.conf(master="lo"), 7, "Ethernet"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_clear_error_nothing_left(lab, case):
    """Item 3: bad input gets a CNI error naming the problem and leaves nothing behind."""
    make, code, word = BAD[case]
    conf = make(lab)
    c = lab.container()
    r = lab.run("ADD", conf, c)
    assert r.rc != 0 and r.json["code"] == code, r
    assert word in r.json["msg"] + r.json.get("details", ""), r
    assert b"Traceback" not in r.stderr.encode() if isinstance(r.stderr, str) else b"Traceback" not in r.stderr
    assert [m for m in lab.macvlans() if m.startswith("cmv")] == [] and lab.macvlans(c) == []
    assert lab.leases() == [] and lab.endpoints() == []


def test_cnmctl_shows_master_mode_and_gc_sweeps_our_leftover(lab):
    """Item 4: network inspect and endpoint ls show driver, master and mode; `cnmctl gc` removes
    a macvlan of ours (tagged with this store) whose endpoint has no record, and leaves an
    untagged look-alike alone."""
    conf = lab.conf()
    c = lab.container()
    lab.add(conf, c)
    inspect = _cnmctl(lab, "network", "inspect", lab.network)
    assert inspect.returncode == 0, inspect
    view = json.loads(inspect.stdout)
    view = view[0] if isinstance(view, list) else view
    assert view["Driver"] == "macvlan" and view["Options"]["master"] == lab.master
    assert view["Options"]["mode"] == "bridge"
    ls = _cnmctl(lab, "endpoint", "ls").stdout
    assert "macvlan" in ls and lab.master in ls and "bridge" in ls, ls
    # a leftover of ours (an ADD killed before the move, its record since lost) and a stranger
    from conftest import store_id
    from cni_plugins.cnm.model import owner_tag

    ours, stranger = "cmv" + "a" * 12, "cmv" + "b" * 12
    for name in (ours, stranger):
        sh("ip", "link", "add", "link", lab.master, "name", name, "type", "macvlan", ns=lab.host)
    sh("ip", "link", "set", ours, "alias", owner_tag(store_id(lab.env), "a" * 24), ns=lab.host)
    assert _cnmctl(lab, "gc").returncode == 0
    assert ours not in lab.macvlans() and stranger in lab.macvlans()
    assert lab.macvlans(c) == ["eth0"]
    assert lab.run("DEL", conf, c).rc == 0
    sh("ip", "link", "del", stranger, ns=lab.host)
    lab.assert_nothing_left(c)


def _cnmctl(lab, *argv):
    import os
    import subprocess

    from conftest import BIN

    return subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), *argv],
                          env=dict(lab.env), capture_output=True, text=True, timeout=120)


def test_doctor_flags_a_missing_or_down_master(lab):
    """Item 4: `cnmctl doctor` reports a down, then a missing, master of a network in use."""
    conf = lab.conf()
    c = lab.container()
    lab.add(conf, c)

    def network_findings():
        proc = _cnmctl(lab, "doctor", "--format", "json")
        return [f for f in json.loads(proc.stdout) if f["check"] == "network"], proc.returncode

    found, rc = network_findings()
    assert [f["severity"] for f in found] == ["ok"], found
    sh("ip", "link", "set", lab.master, "down", ns=lab.host)
    found, rc = network_findings()
    assert rc == 1 and found[0]["severity"] == "error" and "down" in found[0]["message"], found
    sh("ip", "link", "del", lab.master, ns=lab.host)
    found, rc = network_findings()
    assert rc == 1 and "does not exist" in found[0]["message"], found
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)


def test_host_reaches_its_containers_only_through_a_macvlan_of_its_own(lab):
    """docs/operators.md "macvlan": the node cannot reach its macvlan containers through the
    master; the documented workaround (a bridge-mode macvlan of the host's own) works."""
    sh("ip", "addr", "add", "10.251.0.2/24", "dev", lab.master, ns=lab.host)
    conf = lab.conf()
    c = lab.container()
    r = lab.add(conf, c)
    assert lab.ping(lab.host, PEER)
    assert not lab.ping(lab.host, address_of(r))
    shim = unique("mvh")
    sh("ip", "link", "add", shim, "link", lab.master, "type", "macvlan", "mode", "bridge", ns=lab.host)
    sh("ip", "addr", "add", "10.251.0.240/32", "dev", shim, ns=lab.host)
    sh("ip", "link", "set", shim, "up", ns=lab.host)
    sh("ip", "route", "add", f"{address_of(r)}/32", "dev", shim, ns=lab.host)
    assert lab.ping(lab.host, address_of(r))
    assert lab.run("DEL", conf, c).rc == 0
    sh("ip", "link", "del", shim, ns=lab.host)
    lab.assert_nothing_left(c)


def test_dual_stack_reaches_the_peer_over_ipv4_and_ipv6(lab):
    """Item 2: IPv6 addresses from IPAM on the macvlan (DAD done when ADD answers), ndisc_notify as the
    reference sets it; the container reaches the LAN peer over both families."""
    sh("ip", "addr", "add", "fd51::1/64", "dev", _lan_end(lab), "nodad", ns=lab.lan)
    conf = lab.conf(ipam=lab.ipam("10.251.0.0/24", {"subnet": "fd51::/64", "rangeStart": "fd51::10"},
                                  rangeStart="10.251.0.10"))
    c = lab.container()
    r = lab.add(conf, c)
    assert sorted(ip["address"].split("/")[0] for ip in r["ips"]) == ["10.251.0.10", "fd51::10"]
    assert lab.sysctl("net.ipv6.conf.eth0.ndisc_notify", c) == "1"
    assert lab.ping(c, PEER) and lab.ping(c, "fd51::1")
    assert lab.run("CHECK", with_prev(conf, r), c).rc == 0
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)
