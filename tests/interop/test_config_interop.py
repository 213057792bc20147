"""Configs at the edges through Go's host-local and bridge (Debian's 1.1.1, /usr/lib/cni) and
through cnm-ipam and cnm-bridge (issue 12 items 9 and 10): what the reference takes must
give the same result, field by field; what it refuses we refuse too, with code 7 naming the
key (the reference says 999 with Go's parse error)."""

from __future__ import annotations

import copy
import json
import os

import pytest

from support.bridge import Lab
from support.common import BIN, GO_PLUGINS, exec_plugin

GO_VERSIONS = ("0.2.0", "0.3.1", "0.4.0", "1.0.0")


def ipam_add(plugin: str, ipam: dict, env: dict, tmp_path, version: str = "1.0.0", **top):
    data = tmp_path / plugin
    conf = {"cniVersion": version, "name": "edges", "type": plugin,
            "ipam": dict(copy.deepcopy(ipam), type=plugin, dataDir=str(data)), **top}
    directory = GO_PLUGINS if plugin == "host-local" else BIN
    return exec_plugin(plugin, "ADD", conf, env, container_id="c1", netns="/run/netns/none", ifname="eth0",
                       directory=directory)


def r(subnet: str, **kw) -> dict:
    return {"subnet": subnet, **kw}


# Taken by host-local: cnm-ipam must print the very same result.
ACCEPTED = {
    "gateway-outside-subnet": {"ranges": [[r("10.1.0.0/24", gateway="10.9.0.1")]]},
    "gateway-network-address": {"ranges": [[r("10.1.0.0/24", gateway="10.1.0.0")]]},
    "gateway-ipv4-mapped": {"ranges": [[r("10.1.0.0/24", gateway="::ffff:10.1.0.9")]]},
    "prefix-leading-zero": {"ranges": [[r("10.1.0.0/024")]]},
    "empty-start-and-gateway": {"ranges": [[r("10.1.0.0/24", rangeStart="", gateway="")]]},
    "route-empty-gw": {"ranges": [[r("10.1.0.0/24")]], "routes": [{"dst": "0.0.0.0/0", "gw": ""}]},
    "dual-stack-routes": {"ranges": [[r("10.1.0.0/24")], [r("fd00:1::/64")]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:1::fe"}]},
}

# Refused by host-local (before: accepted by cnm-ipam, most of them with an address).
REFUSED = {
    "subnet-leading-space": ({"ranges": [[r(" 10.1.0.0/24")]]}, "ipam.ranges[0][0].subnet"),
    "subnet-trailing-newline": ({"ranges": [[r("10.1.0.0/24\n")]]}, "ipam.ranges[0][0].subnet"),
    "legacy-subnet-space": ({"subnet": " 10.1.0.0/24"}, "ipam.subnet"),
    "legacy-subnet-empty": ({"subnet": ""}, "ipam.subnet"),
    "subnet-zone": ({"ranges": [[r("fe80::%eth0/64")]]}, "ipam.ranges[0][0].subnet"),
    "subnet-netmask": ({"ranges": [[r("10.1.0.0/255.255.255.0")]]}, "ipam.ranges[0][0].subnet"),
    "start-space": ({"ranges": [[r("10.1.0.0/24", rangeStart=" 10.1.0.5")]]}, "ipam.ranges[0][0].rangeStart"),
    "ranges-empty": ({"ranges": []}, "ipam.ranges"),
    "route-dst-space": ({"ranges": [[r("10.1.0.0/24")]], "routes": [{"dst": " 0.0.0.0/0"}]}, "ipam.routes[0].dst"),
    "route-gw-space": ({"ranges": [[r("10.1.0.0/24")]], "routes": [{"dst": "0.0.0.0/0", "gw": " 10.1.0.1"}]},
                       "ipam.routes[0].gw"),
}


@pytest.mark.parametrize("version", GO_VERSIONS)
@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_same_result_as_host_local(cnm_env, tmp_path, case, version):
    """Issue 12 item 10: a gateway outside the subnet was refused; and an empty DNS was left
    out of 1.x results where host-local prints "dns":{}."""
    go = ipam_add("host-local", ACCEPTED[case], cnm_env, tmp_path, version)
    ours = ipam_add("cnm-ipam", ACCEPTED[case], cnm_env, tmp_path, version)
    assert go.rc == 0, go
    assert ours.rc == 0, ours
    assert ours.json == go.json


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_as_host_local_refuses(cnm_env, tmp_path, case):
    """Issue 12 items 9 and 10: each was accepted by cnm-ipam."""
    ipam, key = REFUSED[case]
    go = ipam_add("host-local", ipam, cnm_env, tmp_path)
    ours = ipam_add("cnm-ipam", ipam, cnm_env, tmp_path)
    assert go.rc != 0 and go.json["code"] != 0, go
    assert ours.rc == 1 and ours.json["code"] == 7 and key in ours.json["msg"], ours
    assert not os.path.exists(tmp_path / "cnm-ipam" / "edges") or \
        sorted(os.listdir(tmp_path / "cnm-ipam" / "edges")) in ([], ["lock"])


@pytest.mark.parametrize("args", [{"cni": "x"}, {"cni": {"ips": " 10.1.0.7"}}, {"cni": {"ips": [" 10.1.0.7"]}}])
def test_args_refused_as_host_local_refuses(cnm_env, tmp_path, args):
    """Issue 12 item 9: `args: {"cni": "x"}` (and a requested IP with a space) were accepted."""
    ipam = {"ranges": [[r("10.1.0.0/24")]]}
    go = ipam_add("host-local", ipam, cnm_env, tmp_path, args=args)
    ours = ipam_add("cnm-ipam", ipam, cnm_env, tmp_path, args=args)
    assert go.rc != 0, go
    assert ours.rc == 1 and ours.json["code"] == 7 and "args.cni" in ours.json["msg"], ours


def normalise(result: dict, ns: str) -> dict:
    out = json.loads(json.dumps(result))
    for i, itf in enumerate(out.get("interfaces", [])):
        itf["mac"] = "<mac>"
        if itf.get("sandbox") == ns:
            itf["sandbox"] = "<netns>"
        if i == 1:
            itf["name"] = "<host veth>"
    return out


@pytest.mark.parametrize("ipam_type", ["host-local", "cnm-ipam"])
def test_gateway_outside_subnet_through_the_bridge_as_go(netns, cnm_env, tmp_path, ipam_type):
    """Issue 12 item 10: a gateway outside the subnet (taken by host-local) on an isGateway
    bridge: the Go bridge puts it on the bridge with the subnet's prefix length; so must we,
    and the results must be equal field by field ("dns":{} included)."""
    seen = {}
    for ptype in ("bridge", "cnm-bridge"):
        lab = Lab(netns, cnm_env, tmp_path / ptype, ipam_type="host-local" if ptype == "bridge" else ipam_type)
        lab.bridge, lab.network = "cnmgwo0", "gwout"
        conf = lab.conf(ipam=lab.ipam({"subnet": "10.250.0.0/24", "gateway": "10.9.0.1"}), plugin=ptype,
                        isGateway=True)
        ns = lab.container()
        directory = BIN if ptype.startswith("cnm") else GO_PLUGINS
        run = lab.run("ADD", conf, ns, plugin=ptype, directory=directory)
        assert run.rc == 0, (ptype, run)
        seen[ptype] = (normalise(run.json, ns), lab.addrs(lab.bridge, lab.host), lab.addrs("eth0", ns))
        assert lab.run("DEL", conf, ns, plugin=ptype, directory=directory).rc == 0
    assert seen["cnm-bridge"] == seen["bridge"]
    assert seen["bridge"][1] == ["10.9.0.1/24"]
