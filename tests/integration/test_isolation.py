"""Docker-style isolation in cnm-bridge, with real traffic: `icc: false` (no traffic between
containers of one bridge; gateway and outside still reachable) and `isolateNetworks: true`
(no traffic with other cnm networks). Defaults keep the reference bridge's behaviour."""

from __future__ import annotations

import pytest

from support.bridge import Lab, delete_nft_element, with_prev
from support.common import unique
from support.ports import OUTSIDE_V4, UPLINK_V4, servers, ask, nft_map_elements, outside_host, reach  # servers: a fixture


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def addresses(result) -> list[str]:
    return [ip["address"].split("/")[0] for ip in result["ips"]]


def assert_all_gone(lab):
    assert [v for v in lab.veths() if v != "up0"] == []
    assert lab.leases() == [] and lab.endpoints() == []
    assert lab.nft_elements() == [] and nft_map_elements(lab) == []


def test_icc_false_separates_containers_of_one_bridge(lab, servers):
    outside = outside_host(lab)
    ipam = lab.ipam("10.250.0.0/24", "fd00:250::/64")
    conf = lab.conf(ipam=ipam, isDefaultGateway=True, ipMasq=True, icc=False)
    ns1, ns2 = lab.container(), lab.container()
    r1 = lab.add(conf, ns1, cid="c1")
    r2 = lab.add(conf, ns2, cid="c2")
    servers.start(ns2, "c2", "tcp:80", "udp:53")
    for address in addresses(r2):  # nothing passes between the two, v4 or v6, TCP, UDP or ICMP
        assert not lab.ping(ns1, address)
        assert ask(ns1, "tcp", address, 80).startswith("ERR")
        assert ask(ns1, "udp", address, 53).startswith("ERR")
    for gw in ("10.250.0.1", "fd00:250::1"):  # the gateway still answers
        assert lab.ping(ns1, gw, count=2)
    assert lab.ping(ns1, OUTSIDE_V4)  # and the outside (masqueraded)
    servers.start(outside, "out", "tcp:81")
    assert reach(ns1, "tcp", OUTSIDE_V4, 81) == f"out {UPLINK_V4}"
    assert ("bridge", "noicc") in {(e[0], e[1]) for e in lab.nft_elements()}
    assert lab.run("CHECK", with_prev(conf, r1), ns1, cid="c1").rc == 0
    host_veth = r1["interfaces"][1]["name"]
    delete_nft_element(lab.host, "bridge", "noicc", host_veth)
    run = lab.run("CHECK", with_prev(conf, r1), ns1, cid="c1")
    assert run.rc != 0 and run.json["code"] == 103 and "noicc" in run.json["details"], run
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    assert lab.run("DEL", conf, "", cid="c2").rc == 0
    assert_all_gone(lab)


def test_icc_default_lets_containers_talk(lab, servers):
    conf = lab.conf(isDefaultGateway=True)
    ns1, ns2 = lab.container(), lab.container()
    lab.add(conf, ns1, cid="c1")
    r2 = lab.add(conf, ns2, cid="c2")
    servers.start(ns2, "c2", "tcp:80")
    assert reach(ns1, "tcp", addresses(r2)[0], 80).startswith("c2 10.250.0.")
    assert lab.nft_elements() == []  # defaults program nothing
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    assert lab.run("DEL", conf, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


def test_isolate_networks(lab, servers):
    outside = outside_host(lab)
    iso = lab.conf(ipam=lab.ipam("10.251.0.0/24", "fd00:251::/64"), isDefaultGateway=True, ipMasq=True,
                   isolateNetworks=True,
                   capabilities={"portMappings": True},
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    other = lab.conf(ipam=lab.ipam("10.252.0.0/24", "fd00:252::/64"), isDefaultGateway=True, ipMasq=True,
                     name=unique("brnet", 30), bridge=unique("cnb"))
    third = lab.conf(ipam=lab.ipam("10.253.0.0/24"), isDefaultGateway=True,
                     name=unique("brnet", 30), bridge=unique("cnb"))
    nsa, nsb, nsc = lab.container(), lab.container(), lab.container()
    ra = lab.add(iso, nsa, cid="ca")
    rb = lab.add(other, nsb, cid="cb")
    rc = lab.add(third, nsc, cid="cc")
    servers.start(nsa, "a", "tcp:80")
    servers.start(nsb, "b", "tcp:80")
    # control: two networks without isolation reach each other through the host
    assert reach(nsc, "tcp", addresses(rb)[0], 80).startswith("b ")
    # the isolated network and the others: nothing, either way, v4 and v6
    for address in addresses(rb):
        assert not lab.ping(nsa, address)
        assert ask(nsa, "tcp", address, 80).startswith("ERR")
    for address in addresses(ra):
        assert not lab.ping(nsb, address)
        assert ask(nsb, "tcp", address, 80).startswith("ERR")
    assert ask(nsc, "tcp", addresses(ra)[0], 80).startswith("ERR")
    # but the isolated container reaches its gateway and the outside, and is published to it
    assert lab.ping(nsa, "10.251.0.1") and lab.ping(nsa, OUTSIDE_V4)
    assert reach(outside, "tcp", UPLINK_V4, 8080) == f"a {OUTSIDE_V4}"
    assert reach(nsa, "tcp", UPLINK_V4, 8080).startswith("a ")  # hairpin within its own network
    assert lab.run("CHECK", with_prev(iso, ra), nsa, cid="ca").rc == 0
    delete_nft_element(lab.host, "inet", "iso_bridges", f"{lab.bridge} . {lab.bridge}")
    run = lab.run("CHECK", with_prev(iso, ra), nsa, cid="ca")
    assert run.rc != 0 and run.json["code"] == 103 and "iso_bridges" in run.json["details"], run
    assert lab.run("DEL", iso, "", cid="ca").rc == 0
    assert lab.run("DEL", other, nsb, cid="cb").rc == 0
    assert lab.run("DEL", third, nsc, cid="cc").rc == 0
    assert_all_gone(lab)
