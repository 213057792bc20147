"""Published ports of cnm-bridge (nftables, table inet cnm) beside Debian's Go bridge + portmap
(iptables-nft) on one host: both publish, both answer real TCP and UDP traffic, and removing
either leaves the other working. All inside the lab's throwaway host netns."""

from __future__ import annotations

import pytest

from support.bridge import Lab, sh, with_prev
from support.common import unique
from support.ports import OUTSIDE_V4, UPLINK_V4, servers, ask, nft_map_elements, outside_host, reach  # servers: a fixture


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="host-local")


def go_network(lab) -> tuple[dict, dict]:
    """Go bridge + Go portmap (tcp 18080 -> 80, udp 18053 -> 53), as libcni would run the list."""
    name = unique("gonet", 30)
    bridge = {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": unique("gob"),
              "isDefaultGateway": True, "ipMasq": True, "ipam": lab.ipam("10.240.0.0/24")}
    portmap = {"cniVersion": "1.0.0", "name": name, "type": "portmap", "capabilities": {"portMappings": True},
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                                                  {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]}}
    return bridge, portmap


def go_add(lab, bridge, portmap, ns):
    run = lab.run_go("ADD", bridge, ns, cid="go1")
    assert run.rc == 0, run
    out = lab.run_go("ADD", with_prev(portmap, run.json), ns, cid="go1")
    assert out.rc == 0, out
    return out.json


def go_del(lab, bridge, portmap, ns, result):
    assert lab.run_go("DEL", with_prev(portmap, result), ns, cid="go1").rc == 0
    assert lab.run_go("DEL", with_prev(bridge, result), ns, cid="go1").rc == 0


@pytest.mark.parametrize("removed_first", ["go", "cnm"])
def test_go_portmap_and_cnm_bridge_publish_side_by_side(lab, servers, removed_first):
    outside = outside_host(lab)
    ns_go, ns_cnm = lab.container(), lab.container()
    bridge, portmap = go_network(lab)
    go_result = go_add(lab, bridge, portmap, ns_go)
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24"), isDefaultGateway=True, ipMasq=True,
                    capabilities={"portMappings": True},
                    runtimeConfig={"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp"},
                                                    {"HostPort": 8053, "ContainerPort": 53, "Protocol": "udp"}]})
    cnm_result = lab.add(conf, ns_cnm, cid="cnm1")
    servers.start(ns_go, "go", "tcp:80", "udp:53")
    servers.start(ns_cnm, "cnm", "tcp:80", "udp:53")

    def go_works():
        return (reach(outside, "tcp", UPLINK_V4, 18080).startswith("go ")
                and reach(outside, "udp", UPLINK_V4, 18053).startswith("go "))

    def cnm_works():
        return (reach(outside, "tcp", UPLINK_V4, 8080) == f"cnm {OUTSIDE_V4}"
                and reach(outside, "udp", UPLINK_V4, 8053) == f"cnm {OUTSIDE_V4}"
                and reach(lab.host, "tcp", "127.0.0.1", 8080).startswith("cnm "))

    assert go_works() and cnm_works()
    assert "18080" in sh("iptables-save", "-t", "nat", ns=lab.host).stdout  # theirs: iptables-nft
    assert nft_map_elements(lab)  # ours: table inet cnm
    assert lab.run("CHECK", with_prev(conf, cnm_result), ns_cnm, cid="cnm1").rc == 0

    if removed_first == "go":
        go_del(lab, bridge, portmap, ns_go, go_result)
        assert ask(outside, "tcp", UPLINK_V4, 18080).startswith("ERR")
        assert cnm_works()
        assert lab.run("CHECK", with_prev(conf, cnm_result), ns_cnm, cid="cnm1").rc == 0
        assert lab.run("DEL", conf, ns_cnm, cid="cnm1").rc == 0
    else:
        assert lab.run("DEL", conf, "", cid="cnm1").rc == 0
        assert ask(outside, "tcp", UPLINK_V4, 8080).startswith("ERR")
        assert go_works()
        go_del(lab, bridge, portmap, ns_go, go_result)
    assert "18080" not in sh("iptables-save", "-t", "nat", ns=lab.host).stdout
    assert lab.nft_elements() == [] and nft_map_elements(lab) == [] and lab.endpoints() == []
