"""cnm-bridge published ports (runtimeConfig.portMappings) with real TCP and UDP traffic:
from another machine, from the host (127.0.0.1 and its own addresses), from the container
itself and a neighbour (hairpin), IPv4 and IPv6; hostIP / hostBindingIP; conflicts; CHECK;
removal with no netns and no prevResult. Everything runs in the lab's throwaway host netns."""

from __future__ import annotations

import pytest

from support.bridge import Lab, delete_nft_element, sh, with_prev
from support.ports import OUTSIDE_V4, UPLINK_V4, UPLINK_V6, servers, ask, nft_map_elements, outside_host, reach  # servers: a fixture


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def ports_conf(lab, mappings, dual=True, **keys):
    ipam = lab.ipam("10.250.0.0/24", "fd00:250::/64") if dual else lab.ipam("10.250.0.0/24")
    conf = lab.conf(ipam=ipam, isDefaultGateway=True, capabilities={"portMappings": True}, **keys)
    conf["runtimeConfig"] = {"portMappings": mappings}
    return conf


def assert_all_gone(lab):
    assert [v for v in lab.veths() if v != "up0"] == []  # up0: the uplink to the outside host
    assert lab.leases() == [] and lab.endpoints() == []
    assert lab.nft_elements() == [] and nft_map_elements(lab) == []


def test_publish_everywhere_dual_stack(lab, servers):
    outside = outside_host(lab)
    # containerd's spelling of the keys
    mappings = [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP"},
                {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp"},
                {"hostPort": 9132, "containerPort": 132, "protocol": "sctp"}]
    conf = ports_conf(lab, mappings)
    ns1, ns2 = lab.container(), lab.container()
    out = lab.add(conf, ns1, cid="c1")
    lab.add(lab.conf(ipam=conf["ipam"], isDefaultGateway=True), ns2, cid="c2")  # a neighbour, nothing published
    servers.start(ns1, "c1", "tcp:80", "udp:53")

    # from another machine, v4 and v6, TCP and UDP: the container sees the real client
    assert reach(outside, "tcp", UPLINK_V4, 8080) == f"c1 {OUTSIDE_V4}"
    assert reach(outside, "udp", UPLINK_V4, 5353) == f"c1 {OUTSIDE_V4}"
    assert reach(outside, "tcp", UPLINK_V6, 8080).startswith("c1 2001:db8:5::2")
    assert reach(outside, "udp", UPLINK_V6, 5353).startswith("c1 2001:db8:5::2")
    # from the host itself: loopback and its own addresses
    assert reach(lab.host, "tcp", "127.0.0.1", 8080).startswith("c1 ")
    assert reach(lab.host, "udp", "127.0.0.1", 5353).startswith("c1 ")
    assert reach(lab.host, "tcp", UPLINK_V4, 8080).startswith("c1 ")
    assert reach(lab.host, "tcp", UPLINK_V6, 8080).startswith("c1 ")
    # hairpin: the container reaches its own published port, and so does its neighbour
    assert reach(ns1, "tcp", UPLINK_V4, 8080) == "c1 10.250.0.1"  # masqueraded to the gateway
    assert reach(ns1, "udp", UPLINK_V4, 5353) == "c1 10.250.0.1"
    assert reach(ns1, "tcp", UPLINK_V6, 8080) == "c1 fd00:250::1"
    assert reach(ns2, "tcp", UPLINK_V4, 8080).startswith("c1 ")
    assert reach(ns2, "tcp", UPLINK_V6, 8080).startswith("c1 ")
    # the bridge lets 127/8 out only with route_localnet
    assert lab.sysctl(f"net.ipv4.conf.{lab.bridge}.route_localnet") == "1"

    # the kernel state: map entries keyed l4proto . host address . port, owned by the endpoint
    maps = nft_map_elements(lab)
    keys = {(m, str(k["concat"][0]), k["concat"][-1]) for m, k, _, _ in maps}
    assert ("ports4_any_addr", "tcp", 8080) in keys and ("ports6_any_port", "udp", 5353) in keys
    assert ("ports4_any_addr", "sctp", 9132) in keys
    assert {c.split()[1] for *_, c in maps} == {"c1"}  # the comment names the container
    assert lab.run("CHECK", with_prev(conf, out), ns1, cid="c1").rc == 0

    # removal with no netns and no prevResult
    assert lab.run("DEL", conf, "", cid="c1").rc == 0
    assert ask(outside, "tcp", UPLINK_V4, 8080).startswith("ERR")
    assert lab.run("DEL", lab.conf(ipam=conf["ipam"]), ns2, cid="c2").rc == 0
    assert_all_gone(lab)


def test_host_ip_and_host_binding_ip_limit_the_binding(lab, servers):
    outside = outside_host(lab)
    sh("ip", "addr", "add", "192.0.2.3/24", "dev", "up0", ns=lab.host)
    ns1, ns2 = lab.container(), lab.container()
    conf1 = ports_conf(lab, [{"hostPort": 8081, "containerPort": 80, "hostIP": "192.0.2.3"}], dual=False)
    lab.add(conf1, ns1, cid="c1")
    conf2 = ports_conf(lab, [{"hostPort": 8082, "containerPort": 80}], dual=False, hostBindingIP="192.0.2.1")
    lab.add(conf2, ns2, cid="c2")
    servers.start(ns1, "c1", "tcp:80")
    servers.start(ns2, "c2", "tcp:80")
    assert reach(outside, "tcp", "192.0.2.3", 8081).startswith("c1 ")
    assert ask(outside, "tcp", "192.0.2.1", 8081).startswith("ERR")
    assert reach(outside, "tcp", "192.0.2.1", 8082).startswith("c2 ")
    assert ask(outside, "tcp", "192.0.2.3", 8082).startswith("ERR")
    assert ask(lab.host, "tcp", "127.0.0.1", 8081).startswith("ERR")
    assert lab.run("DEL", conf1, ns1, cid="c1").rc == 0
    assert lab.run("DEL", conf2, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


@pytest.mark.parametrize("first,second", [
    ({"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 81, "hostIP": "192.0.2.1"}),
    ({"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.1"}, {"hostPort": 8080, "containerPort": 80}),
    ({"hostPort": 8080, "containerPort": 80, "protocol": "udp"},
     {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "::"}),
])
def test_taken_port_is_refused_naming_the_owner(lab, servers, first, second):
    outside = outside_host(lab)
    ns1, ns2 = lab.container(), lab.container()
    conf1 = ports_conf(lab, [first])
    lab.add(conf1, ns1, cid="owner-c1")
    before = (lab.nft_elements(), nft_map_elements(lab), lab.leases(), lab.veths())
    conf2 = ports_conf(lab, [{"hostPort": 9000, "containerPort": 1}, second])
    run = lab.run("ADD", conf2, ns2, cid="c2")
    assert run.rc != 0 and run.json["code"] == 102, run
    assert "port already allocated" in run.json["msg"] and "owner-c1" in run.json["msg"], run.json
    assert b"Traceback" not in run.stderr
    # nothing changed: no link, no lease, no nft entry, no record
    assert (lab.nft_elements(), nft_map_elements(lab), lab.leases(), lab.veths()) == before
    assert lab.link("eth0", ns2) is None and len(lab.endpoints()) == 1
    # the owner still works; another protocol or address of the same port is free
    servers.start(ns1, "c1", "tcp:80", "udp:80")
    proto = first.get("protocol", "tcp")
    assert reach(outside, proto, UPLINK_V4, 8080).startswith("c1 ")
    other = dict(second, protocol="sctp")
    lab.add(ports_conf(lab, [other]), ns2, cid="c2")
    assert lab.run("DEL", conf1, ns1, cid="owner-c1").rc == 0
    assert lab.run("DEL", conf2, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


def test_same_port_on_two_host_addresses_is_fine(lab, servers):
    outside = outside_host(lab)
    sh("ip", "addr", "add", "192.0.2.3/24", "dev", "up0", ns=lab.host)
    ns1, ns2 = lab.container(), lab.container()
    conf1 = ports_conf(lab, [{"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.1"}])
    conf2 = ports_conf(lab, [{"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.3"}])
    lab.add(conf1, ns1, cid="c1")
    lab.add(conf2, ns2, cid="c2")
    servers.start(ns1, "c1", "tcp:80")
    servers.start(ns2, "c2", "tcp:80")
    assert reach(outside, "tcp", "192.0.2.1", 8080).startswith("c1 ")
    assert reach(outside, "tcp", "192.0.2.3", 8080).startswith("c2 ")
    assert lab.run("DEL", conf1, ns1, cid="c1").rc == 0
    assert reach(outside, "tcp", "192.0.2.3", 8080).startswith("c2 ")
    assert lab.run("DEL", conf2, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


def conntrack_udp(lab, port: int) -> str:
    return sh("conntrack", "-L", "-p", "udp", "--orig-port-dst", str(port), ns=lab.host, check=False).stdout


def test_udp_conntrack_flushed_on_add_and_del(lab, servers):
    """A UDP flow that began before the port was published keeps its (un-NATed) conntrack
    entry while packets keep coming; ADD flushes it so the flow reaches the container. DEL
    flushes the DNATed entry so it does not outlive the container."""
    outside = outside_host(lab)
    ns, ns0 = lab.container(), lab.container()
    # conntrack runs in the host once any NAT hook is there (on a real host: always)
    conf0 = ports_conf(lab, [{"hostPort": 7000, "containerPort": 7000}], dual=False)
    lab.add(conf0, ns0, cid="c0")
    servers.start(lab.host, "host", "udp:5300")  # before publishing, the host itself answers
    assert reach(outside, "udp", UPLINK_V4, 5300, sport=40000) == f"host {OUTSIDE_V4}"
    assert UPLINK_V4 in conntrack_udp(lab, 5300)
    conf = ports_conf(lab, [{"hostPort": 5300, "containerPort": 53, "protocol": "udp"}], dual=False)
    address = lab.add(conf, ns)["ips"][0]["address"].split("/")[0]
    servers.start(ns, "c1", "udp:53")
    # same 5-tuple as before: reaches the container only because the old entry is gone
    assert reach(outside, "udp", UPLINK_V4, 5300, sport=40000) == f"c1 {OUTSIDE_V4}"
    assert address in conntrack_udp(lab, 5300)  # the DNATed entry
    assert lab.run("DEL", conf, "").rc == 0
    assert address not in conntrack_udp(lab, 5300)
    assert reach(outside, "udp", UPLINK_V4, 5300, sport=40000) == f"host {OUTSIDE_V4}"
    assert lab.run("DEL", conf0, ns0, cid="c0").rc == 0
    assert_all_gone(lab)


def test_check_finds_a_missing_published_port(lab):
    ns = lab.container()
    conf = ports_conf(lab, [{"hostPort": 8080, "containerPort": 80}], dual=False)
    out = lab.add(conf, ns)
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    # a published port the runtime asks for but ADD did not program is reported too
    more = ports_conf(lab, [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 8090, "containerPort": 90}],
                      dual=False)
    run = lab.run("CHECK", with_prev(more, out), ns)
    assert run.rc != 0 and run.json["code"] == 103 and "8090" in run.json["details"], run
    delete_nft_element(lab.host, "inet", "ports4_any_addr", "tcp . 8080")
    run = lab.run("CHECK", with_prev(conf, out), ns)
    assert run.rc != 0 and run.json["code"] == 103 and "ports4_any_addr" in run.json["details"], run
    assert lab.run("DEL", conf, ns).rc == 0
    assert_all_gone(lab)


@pytest.mark.parametrize("mapping,named", [
    ({"hostPort": 0, "containerPort": 80}, "hostPort"),
    ({"hostPort": 80, "containerPort": 70000}, "containerPort"),
    ({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}, "protocol"),
    ({"hostPort": 80, "containerPort": 80, "hostIP": "nowhere"}, "hostIP"),
    ("80:80", "entry 0"),
    ([{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81, "hostIP": "192.0.2.1"}],
     "mapped twice"),
])
def test_bad_port_mappings_are_code_7(lab, mapping, named):
    ns = lab.container()
    run = lab.run("ADD", ports_conf(lab, mapping if isinstance(mapping, list) else [mapping], dual=False), ns)
    assert run.rc != 0 and run.json["code"] == 7 and named in run.json["details"], run
    assert b"Traceback" not in run.stderr
    assert_all_gone(lab)
    run = lab.run("ADD", ports_conf(lab, [], dual=False, hostBindingIP="x"), ns)
    assert run.rc != 0 and run.json["code"] == 7 and "hostBindingIP" in run.json["msg"], run
