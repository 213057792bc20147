"""A container on two bridge networks, each with a default route, through the Go bridge
(Debian's 1.1.1 in /usr/lib/cni) and through cnm-bridge: the kernel must end up the same.

What the reference does (seen in these tests): it adds routes without NLM_F_EXCL, so the
second network's IPv4 default route goes in beside the first (the newer one first, both
metric 0), and IPv6's become one multipath route with a nexthop per network. DEL of the
first network takes only its own nexthop with its veth; the second's stays."""

from __future__ import annotations

import pytest

from support.bridge import Lab, with_prev
from support.common import BIN, GO_PLUGINS

NETWORKS = (("a", "10.251.0.0/24", "fd00:251::/64", "eth0"), ("b", "10.252.0.0/24", "fd00:252::/64", "eth1"))


def confs(lab: Lab, ptype: str) -> list[dict]:
    out = []
    for tag, v4, v6, _ in NETWORKS:
        conf = lab.conf(ipam=lab.ipam(v4, v6), plugin=ptype, isDefaultGateway=True)
        conf.update(name=f"{lab.network[:20]}{tag}", bridge=f"{lab.bridge[:12]}{tag}")
        out.append(conf)
    return out


def default_routes(lab: Lab, ns: str) -> list[tuple]:
    """(family, gateway, device) of every default route, in the kernel's order; a multipath
    route gives one entry per nexthop."""
    out = []
    for family in ("-4", "-6"):
        for route in lab.routes(ns, family):
            if route["dst"] != "default":
                continue
            for hop in route.get("nexthops") or [route]:
                out.append((family, hop.get("gateway"), hop.get("dev"), route.get("metric", 0)))
    return out


def run(lab: Lab, command: str, conf: dict, ns: str, ifname: str):
    directory = BIN if conf["type"].startswith("cnm") else GO_PLUGINS
    return lab.run(command, conf, ns, cid="two-nets", ifname=ifname, plugin=conf["type"], directory=directory)


@pytest.mark.parametrize("ptype", ["bridge", "cnm-bridge"])
def test_second_network_default_route_as_go_bridge(netns, cnm_env, tmp_path, ptype):
    """Issue 12 item 6: cnm-bridge took the EEXIST of the second network's default route
    (NLM_F_EXCL) as success, so only the first network's route was installed; CHECK of the
    second network then failed for good, and after DEL of the first the container had no
    default route. Both plugins must leave the same routes at every step."""
    lab = Lab(netns, cnm_env, tmp_path / ptype)
    ns = lab.container()
    first, second = confs(lab, ptype)
    results = []
    for conf, (_, _, _, ifname) in zip((first, second), NETWORKS):
        added = run(lab, "ADD", conf, ns, ifname)
        assert added.rc == 0, added
        results.append(added.json)
    both = [
        ("-4", "10.252.0.1", "eth1", 0),  # the newer network's first, as `ip route prepend`
        ("-4", "10.251.0.1", "eth0", 0),
        ("-6", "fd00:251::1", "eth0", 1024),  # one multipath route
        ("-6", "fd00:252::1", "eth1", 1024),
    ]
    assert default_routes(lab, ns) == both
    if ptype == "cnm-bridge":  # (Go bridge 1.1.1's CHECK fails on a route without gw)
        for conf, result, (_, _, _, ifname) in zip((first, second), results, NETWORKS):
            check = run(lab, "CHECK", with_prev(conf, result), ns, ifname)
            assert check.rc == 0, check

    assert run(lab, "DEL", first, ns, "eth0").rc == 0
    assert default_routes(lab, ns) == [("-4", "10.252.0.1", "eth1", 0), ("-6", "fd00:252::1", "eth1", 1024)]
    if ptype == "cnm-bridge":
        check = run(lab, "CHECK", with_prev(second, results[1]), ns, "eth1")
        assert check.rc == 0, check
    assert run(lab, "DEL", second, ns, "eth1").rc == 0
    assert default_routes(lab, ns) == []
