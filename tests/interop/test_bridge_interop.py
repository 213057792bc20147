"""cnm-bridge beside Debian's reference plugins (containernetworking-plugins 1.1.1, /usr/lib/cni):
delegated Go host-local, a chain with Go portmap/firewall/tuning/bandwidth, and the result
of the Go bridge for the same config. Everything runs in a throwaway host netns per test, so
the Go plugins' iptables rules, bridges and ifb devices vanish with it even if a test fails."""

from __future__ import annotations

import copy
import json
import os

import pytest

from support.bridge import Lab, sh, with_prev
from support.common import BIN, GO_PLUGINS

GO_VERSIONS = ("0.2.0", "0.3.1", "0.4.0", "1.0.0")  # Debian's 1.1.1 plugins stop at 1.0.0


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path)


def plugin_dir(ptype: str) -> str:
    return BIN if ptype.startswith("cnm") else GO_PLUGINS


# ---- host-local delegation -----------------------------------------------------------------
def test_delegates_to_go_host_local_with_its_disk_format(lab):
    ns = lab.container()
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), isGateway=True)
    out = lab.add(conf, ns, cid="ctr-1")
    assert [ip["address"] for ip in out["ips"]] == ["10.250.0.2/24", "fd00:250::2/64"]
    lease = os.path.join(lab.data_dir, lab.network, "10.250.0.2")
    assert open(lease, "rb").read() == b"ctr-1\r\neth0"  # written by Go host-local itself
    assert lab.run("CHECK", with_prev(conf, out), ns, cid="ctr-1").rc == 0  # host-local CHECK delegated too
    assert lab.run("DEL", conf, "", cid="ctr-1").rc == 0
    assert not os.path.exists(lease)
    lab.assert_nothing_left()


def test_ipam_error_object_passes_through(lab):
    conf = lab.conf(ipam=lab.ipam({"subnet": "10.250.0.0/24", "rangeStart": "10.251.0.5"}))
    run = lab.run("ADD", conf, lab.container())
    assert run.rc == 1 and "10.251.0.5" in json.dumps(run.json), run  # host-local's own message
    lab.assert_nothing_left()


# ---- a chain: cnm-bridge then Go portmap, firewall, tuning, bandwidth -------------------------
def chain(lab) -> list[dict]:
    return [
        {"type": "cnm-bridge", "bridge": lab.bridge, "isGateway": True, "ipMasq": True,
          "ipam": lab.ipam("10.250.0.0/24", "fd00:250::/64")},
        {"type": "portmap", "capabilities": {"portMappings": True},
         "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}},
        {"type": "firewall"},
        {"type": "tuning", "mac": "02:aa:bb:cc:dd:ee", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
        {"type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 80000, "egressRate": 8000000,
         "egressBurst": 80000},
    ]


# portmap 1.1.1's CHECK looks for IPv6 rules it never made (containernetworking/plugins#819).
KNOWN_GO_CHECK_BUGS = {"portmap": "could not check ipv6 dnat"}


def run_chain(lab, command: str, plugins: list[dict], ns: str, version: str, prev: dict | None) -> dict | None:
    """What libcni does: inject name/cniVersion (and prevResult), ADD/CHECK in order, DEL in reverse."""
    order = list(reversed(plugins)) if command == "DEL" else plugins
    for plugin in order:
        conf = copy.deepcopy(plugin)
        conf.update(name=lab.network, cniVersion=version)
        if prev is not None:
            conf["prevResult"] = prev
        run = lab.run(command, conf, ns, cid="chain1", plugin=conf["type"], directory=plugin_dir(conf["type"]))
        if command == "CHECK" and conf["type"] in KNOWN_GO_CHECK_BUGS:
            assert run.rc == 0 or KNOWN_GO_CHECK_BUGS[conf["type"]] in run.json["msg"], run
            continue
        assert run.rc == 0, (plugin["type"], command, run)
        if command == "ADD":
            prev = run.json
    return prev


def test_chain_with_go_meta_plugins(lab):
    ns = lab.container()
    plugins = chain(lab)
    result = run_chain(lab, "ADD", plugins, ns, "1.0.0", None)
    # prevResult flowed: tuning changed the MAC and said so; bandwidth added its ifb
    eth0 = next(i for i in result["interfaces"] if i["name"] == "eth0")
    assert eth0["mac"] == "02:aa:bb:cc:dd:ee" == lab.link("eth0", ns)["address"]
    assert result["ips"][0]["address"] == "10.250.0.2/24"
    ifbs = [n for n, l in lab.links().items() if l.get("linkinfo", {}).get("info_kind") == "ifb"]
    assert ifbs, lab.links().keys()
    nat = sh("iptables-save", "-t", "nat", ns=lab.host).stdout
    assert "18080" in nat  # portmap's DNAT
    assert "10.250.0.2" in sh("iptables-save", "-t", "filter", ns=lab.host).stdout  # firewall
    # CHECK every plugin in order with the final result (ours tolerates tuning's MAC change)
    run_chain(lab, "CHECK", plugins, ns, "1.0.0", result)
    # DEL in reverse: every plugin cleans up, ours last
    run_chain(lab, "DEL", plugins, ns, "1.0.0", result)
    assert "18080" not in sh("iptables-save", "-t", "nat", ns=lab.host).stdout
    assert "10.250.0.2" not in sh("iptables-save", "-t", "filter", ns=lab.host).stdout
    assert not [n for n, l in lab.links().items() if l.get("linkinfo", {}).get("info_kind") == "ifb"]
    assert lab.link("eth0", ns) is None
    lab.assert_nothing_left()
    run_chain(lab, "DEL", plugins, "", "1.0.0", None)  # a repeated DEL without netns or cache is fine


# ---- the same config through Go bridge and cnm-bridge -----------------------------------------
def normalise(result: dict, ns: str) -> dict:
    """Names of host veths, netns paths and every MAC differ by design; everything else must be equal."""
    out = copy.deepcopy(result)
    for i, itf in enumerate(out.get("interfaces", [])):
        if "sandbox" in itf:
            assert itf["sandbox"] == ns
            itf["sandbox"] = "<netns>"
        assert len(itf.get("mac", "")) == 17, itf
        itf["mac"] = "<mac>"
        if i == 1:
            itf["name"] = "<host veth>"
    return out


CONFIGS = {
    "gateway-masq": dict(isGateway=True, ipMasq=True),
    "default-gateway-dual-stack": dict(isDefaultGateway=True, ipam=("10.250.0.0/24", "fd00:250::/64")),
    "routes-dns-mtu": dict(isGateway=True, mtu=1400, dns={"nameservers": ["10.250.0.53"], "search": ["example"]},
                           ipam_routes=[{"dst": "192.0.2.0/24"}, {"dst": "198.51.100.0/24", "gw": "10.250.0.254"}]),
    "no-gateway": dict(),
}


@pytest.mark.parametrize("version", GO_VERSIONS)
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_same_result_as_go_bridge(netns, cnm_env, tmp_path, version, case):
    keys = dict(CONFIGS[case])
    ranges = keys.pop("ipam", ("10.250.0.0/24",))
    routes = keys.pop("ipam_routes", None)
    results = {}
    for ptype in ("bridge", "cnm-bridge"):
        lab = Lab(netns, cnm_env, tmp_path / ptype)
        lab.bridge = "cnmcmp0"  # same bridge name in each lab's own host netns
        lab.network = "cmpnet"
        extra = {"routes": routes} if routes else {}
        conf = lab.conf(version, ipam=lab.ipam(*ranges, **extra), plugin=ptype, **keys)
        ns = lab.container()
        run = lab.run("ADD", conf, ns, plugin=ptype, directory=plugin_dir(ptype))
        assert run.rc == 0, (ptype, run)
        results[ptype] = normalise(run.json, ns)
        # the container looks the same from inside too
        results[ptype + "/kernel"] = (lab.addrs("eth0", ns), sorted(
            (r["dst"], r.get("gateway")) for r in lab.routes(ns) + lab.routes(ns, "-6") if "gateway" in r))
        # (Go bridge 1.1.1's own CHECK fails on a route without gw: it expects a nil gateway in the kernel)
        if version not in ("0.2.0", "0.3.1") and ptype == "cnm-bridge":
            assert lab.run("CHECK", with_prev(conf, run.json), ns, plugin=ptype, directory=plugin_dir(ptype)).rc == 0
        assert lab.run("DEL", conf, ns, plugin=ptype, directory=plugin_dir(ptype)).rc == 0
    assert results["cnm-bridge"] == results["bridge"]
    assert results["cnm-bridge/kernel"] == results["bridge/kernel"]
