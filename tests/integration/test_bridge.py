"""cnm-bridge in real namespaces: a throwaway host netns per test, the real bin/ executable,
delegated Go host-local (and in-process cnm-ipam where available), assertions on the kernel."""

from __future__ import annotations

import re
import json
import os
import threading
import time

import pytest

from support.bridge import Lab, delete_nft_element, sh, with_prev
from cni_plugins.cni.errors import CONFLICT
from cni_plugins.cnm.model import endpoint_id
from support.common import ALL_VERSIONS


IPAM_TYPES = ["host-local", "cnm-ipam"]  # delegated Go binary, and ours in-process


@pytest.fixture(params=IPAM_TYPES)
def lab(request, netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type=request.param)


@pytest.fixture
def hl_lab(netns, cnm_env, tmp_path):
    """Tests about the bridge itself, not the IPAM: Go host-local only."""
    return Lab(netns, cnm_env, tmp_path)


# ---- ADD / CHECK / DEL in every spec version ------------------------------------------------
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_every_version(hl_lab, version):
    lab = hl_lab
    if version == "1.1.0":  # Debian's host-local (1.1.1) stops at 1.0.0
        lab.ipam_type = "cnm-ipam"
    ns = lab.container()
    conf = lab.conf(version, isGateway=True)
    out = lab.add(conf, ns)
    assert out["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert out["ip4"]["ip"] == "10.250.0.2/24" and out["ip4"]["gateway"] == "10.250.0.1"
        assert "interfaces" not in out
    else:
        names = [i["name"] for i in out["interfaces"]]
        assert names[0] == lab.bridge and names[1].startswith("cnm") and names[2] == "eth0"
        assert out["interfaces"][2]["sandbox"] == ns and "sandbox" not in out["interfaces"][0]
        assert all(len(i["mac"]) == 17 for i in out["interfaces"])
        ip = out["ips"][0]
        assert ip["address"] == "10.250.0.2/24" and ip["gateway"] == "10.250.0.1" and ip["interface"] == 2
        assert ("version" in ip) == (version in ("0.3.0", "0.3.1", "0.4.0"))
        # the kernel agrees with the result
        host_veth = lab.link(names[1])
        assert host_veth["master"] == lab.bridge
        assert lab.link(lab.bridge)["linkinfo"]["info_kind"] == "bridge"
        eth0 = lab.link("eth0", ns)
        assert eth0["address"] == out["interfaces"][2]["mac"] and eth0["linkinfo"]["info_kind"] == "veth"
        assert lab.addrs("eth0", ns) == ["10.250.0.2/24"]
        assert "10.250.0.1/24" in lab.addrs(lab.bridge, lab.host)
        assert lab.link(lab.bridge)["address"] == out["interfaces"][0]["mac"] != out["interfaces"][1]["mac"]
    if version not in ("0.1.0", "0.2.0", "0.3.0", "0.3.1"):
        check = lab.run("CHECK", with_prev(conf, out), ns)
        assert check.rc == 0, check
    assert lab.run("DEL", with_prev(conf, out), ns).rc == 0
    assert lab.run("DEL", conf, ns).rc == 0  # idempotent
    assert lab.link("eth0", ns) is None
    lab.assert_nothing_left()


def test_two_sandboxes_talk_dual_stack(lab):
    ns1, ns2 = lab.container(), lab.container()
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), isGateway=True)
    r1 = lab.add(conf, ns1, cid="c1")
    r2 = lab.add(conf, ns2, cid="c2")
    a1 = [ip["address"].split("/")[0] for ip in r1["ips"]]
    a2 = [ip["address"].split("/")[0] for ip in r2["ips"]]
    assert len(a1) == len(a2) == 2 and a1 != a2
    for src, dst in ((ns1, a2), (ns2, a1)):
        for address in dst:  # IPv4 and IPv6 between the sandboxes, no DAD wait
            assert lab.ping(src, address), (src, address)
    for gw in ("10.250.0.1", "fd00:250::1"):
        assert lab.ping(ns1, gw)
    assert lab.sysctl("net.ipv6.conf.eth0.accept_dad", ns1) == "0"
    assert lab.sysctl("net.ipv4.conf.eth0.arp_notify", ns1) == "1"  # set over netlink with link up
    assert lab.sysctl("net.ipv4.ip_forward") == "1"
    assert lab.sysctl("net.ipv6.conf.all.forwarding") == "1"
    veths = lab.veths()
    assert len(veths) == 2
    for veth in veths:  # bridge ports are layer 2: IPv6 reaches the pods without any of their own
        assert lab.sysctl(f"net.ipv6.conf.{veth}.disable_ipv6") == "1"
        out = json.loads(sh("ip", "-6", "-j", "addr", "show", "dev", veth, ns=lab.host).stdout or "[]")
        assert not out or not out[0].get("addr_info"), out
    assert len(lab.leases()) == 4
    for cid, ns in (("c1", ns1), ("c2", ns2)):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()


def _ipv6_of(lab, ns: str) -> tuple[str, list[str]]:
    """eth0's IPv6 address generation mode and addresses (link-local included)."""
    link = lab.link("eth0", ns)
    out = json.loads(sh("ip", "-6", "-j", "addr", "show", "dev", "eth0", ns=ns).stdout or "[]")
    return link.get("inet6_addr_gen_mode", ""), [a["local"] for a in (out[0]["addr_info"] if out else [])]


def _settle(lab, ns: str, until, seconds: float = 3.0):
    """Poll _ipv6_of until `until(mode, addresses)` or the time is up; the last state."""
    deadline = time.monotonic() + seconds
    while True:
        state = _ipv6_of(lab, ns)
        if until(*state) or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def test_ipv4_only_container_end_has_no_ipv6_link_local(hl_lab):
    """A new pod's DAD, router solicitations and MLD reports go to groups the bridge floods to
    every other pod: an IPv4-only endpoint sends none (no link-local address), IPv4 works; an
    IPv6 endpoint, one without IPAM (SLAAC is not ours to stop) and `ipv6LinkLocal: true` keep
    the kernel's; a link whose MTU is too small for IPv6 (no IPv6 state) still gets its ADD."""
    lab = hl_lab
    v4, kept, dual, small, l2 = (lab.container() for _ in range(5))
    lab.add(lab.conf(isGateway=True, ipv6LinkLocal=True), kept, cid="kept")
    # the control first: a link-local address does appear once the carrier is up
    mode, addresses = _settle(lab, kept, lambda mode, a: any(x.startswith("fe80") for x in a))
    assert mode != "none" and any(x.startswith("fe80") for x in addresses), (mode, addresses)
    lab.add(lab.conf(isGateway=True), v4, cid="v4")
    assert "LOWER_UP" in lab.link("eth0", v4)["flags"]
    mode, addresses = _settle(lab, v4, lambda mode, a: bool(a), seconds=1.5)
    assert mode == "none" and addresses == [], (mode, addresses)
    assert lab.sysctl("net.ipv6.conf.eth0.disable_ipv6", v4) == "0"  # IPv6 itself stays on
    assert lab.ping(v4, "10.250.0.1")
    lab.add(lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), isGateway=True), dual, cid="dual")
    mode, addresses = _settle(lab, dual, lambda mode, a: any(x.startswith("fe80") for x in a))
    assert mode != "none" and any(x.startswith("fe80") for x in addresses), (mode, addresses)
    lab.add(lab.conf(ipam={}), l2, cid="l2")
    mode, addresses = _settle(lab, l2, lambda mode, a: any(x.startswith("fe80") for x in a))
    assert mode != "none" and any(x.startswith("fe80") for x in addresses), (mode, addresses)
    small_conf = lab.conf(name="small", bridge=lab.bridge[:-1] + "s", mtu=1200, isGateway=True,
                          ipam=lab.ipam("10.251.0.0/24"))
    lab.add(small_conf, small, cid="small")
    assert lab.link("eth0", small)["mtu"] == 1200 and lab.ping(small, "10.251.0.1")
    for cid, ns, conf in (("kept", kept, None), ("v4", v4, None), ("dual", dual, None), ("l2", l2, None),
                          ("small", small, small_conf)):
        assert lab.run("DEL", conf or lab.conf(), ns, cid=cid).rc == 0
    lab.assert_nothing_left()


def test_exhausted_range_is_a_clean_error(lab):
    conf = lab.conf(ipam=lab.ipam({"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10", "rangeEnd": "10.250.0.10"}),
                    ipMasq=True)
    ns1, ns2 = lab.container(), lab.container()
    lab.add(conf, ns1, cid="c1")
    run = lab.run("ADD", conf, ns2, cid="c2")
    assert run.rc != 0 and run.json["code"] and "Traceback" not in run.stderr.decode()
    assert lab.link("eth0", ns2) is None
    assert len(lab.veths()) == 1 and lab.leases() == ["10.250.0.10"]
    assert [e[1] for e in lab.endpoints()] == ["c1"]
    assert lab.run("DEL", conf, ns2, cid="c2").rc == 0
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    lab.assert_nothing_left()


# ---- config keys visible in the kernel --------------------------------------------------------
def test_mtu_hairpin_isolation_default_gateway(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(mtu=1400, hairpinMode=True, portIsolation=True, isDefaultGateway=True)
    out = lab.add(conf, ns)
    host = out["interfaces"][1]["name"]
    port = lab.link(host)
    assert port["mtu"] == 1400 and lab.link("eth0", ns)["mtu"] == 1400 and lab.link(lab.bridge)["mtu"] == 1400
    slave = port["linkinfo"]["info_slave_data"]
    assert slave["hairpin"] is True and slave["isolated"] is True
    default = [r for r in lab.routes(ns) if r["dst"] == "default"]
    assert default and default[0]["gateway"] == "10.250.0.1" and default[0]["dev"] == "eth0"
    assert {"dst": "0.0.0.0/0", "gw": "10.250.0.1"} in out["routes"]
    assert "10.250.0.1/24" in lab.addrs(lab.bridge, lab.host)  # isDefaultGateway implies isGateway
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    assert lab.run("DEL", conf, ns).rc == 0
    lab.assert_nothing_left()


def test_promisc_mode_and_enabledad(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(promiscMode=True, enabledad=True)
    out = lab.add(conf, ns)
    assert "PROMISC" in lab.link(lab.bridge)["flags"]
    # IPv4 only: the IPv6 DAD knobs are the netns defaults, untouched (as the reference plugin)
    assert lab.sysctl("net.ipv6.conf.eth0.accept_dad", ns) == lab.sysctl("net.ipv6.conf.default.accept_dad", ns)
    assert lab.sysctl("net.ipv4.conf.eth0.arp_notify", ns) == "1"
    port = lab.link(out["interfaces"][1]["name"])["linkinfo"]["info_slave_data"]
    assert port["hairpin"] is False and port["isolated"] is False
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    assert lab.run("DEL", conf, ns).rc == 0


def kernel_has_vlan_filtering(lab) -> bool:
    name = lab.bridge[:-2] + "vf"
    ok = sh("ip", "link", "add", name, "type", "bridge", "vlan_filtering", "1", ns=lab.host, check=False).returncode == 0
    sh("ip", "link", "del", name, ns=lab.host, check=False)
    return ok


def test_vlan(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(vlan=100)
    if kernel_has_vlan_filtering(lab):
        out = lab.add(conf, ns)
        bridge_data = lab.link(lab.bridge)["linkinfo"]["info_data"]
        assert bridge_data["vlan_filtering"] == 1
        vlans = sh("bridge", "-j", "vlan", "show", "dev", out["interfaces"][1]["name"], ns=lab.host).stdout
        assert '"vlan":100' in vlans.replace(" ", "")
        assert lab.run("DEL", conf, ns).rc == 0
    else:  # this kernel was built without CONFIG_BRIDGE_VLAN_FILTERING: a clean error, nothing left
        run = lab.run("ADD", conf, ns)
        assert run.rc == 1 and run.json["code"] == 100 and "bridge" in run.json["msg"]
        assert lab.link("eth0", ns) is None
    lab.assert_nothing_left()


def test_disable_container_interface_layer2_only(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(ipam={}, disableContainerInterface=True)
    out = lab.add(conf, ns)
    assert "ips" not in out and len(out["interfaces"]) == 3
    assert "UP" not in lab.link("eth0", ns)["flags"]
    assert lab.run("DEL", conf, ns).rc == 0
    lab.assert_nothing_left()


@pytest.mark.parametrize("how", ["CNI_ARGS", "args", "runtimeConfig"])
def test_mac_from_args(hl_lab, how):
    lab = hl_lab
    ns = lab.container()
    mac = "02:42:0a:fa:00:07"
    conf = lab.conf()
    args = ""
    if how == "CNI_ARGS":
        args = f"IgnoreUnknown=1;MAC={mac}"
    elif how == "args":
        conf["args"] = {"cni": {"mac": mac}}
    else:
        conf["runtimeConfig"] = {"mac": mac}
    out = lab.add(conf, ns, args=args)
    assert out["interfaces"][2]["mac"] == mac == lab.link("eth0", ns)["address"]
    assert lab.run("DEL", conf, ns, args=args).rc == 0


def test_config_dns_overrides_ipam_dns(hl_lab, tmp_path):
    lab = hl_lab
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.1.1.1\nsearch ipam.example\n")
    ns = lab.container()
    out = lab.add(lab.conf(ipam=lab.ipam(resolvConf=str(resolv))), ns, cid="c1")
    assert out["dns"]["nameservers"] == ["10.1.1.1"]
    conf = lab.conf(ipam=lab.ipam(resolvConf=str(resolv)), dns={"nameservers": ["10.2.2.2"], "search": ["conf.example"]})
    out2 = lab.add(conf, lab.container(), cid="c2")
    assert out2["dns"] == {"nameservers": ["10.2.2.2"], "search": ["conf.example"]}


@pytest.mark.parametrize(
    "keys, named",
    [
        ({"hairpinMode": True, "promiscMode": True}, "hairpinMode"),
        ({"vlan": 4095}, "vlan"),
        ({"vlan": -1}, "vlan"),
        ({"mtu": "1400"}, "mtu"),
        ({"isGateway": "yes"}, "isGateway"),
        ({"ipv6LinkLocal": "true"}, "ipv6LinkLocal"),
        ({"bridge": "a-very-long-bridge-name"}, "bridge"),
        ({"disableContainerInterface": True}, "disableContainerInterface"),
        ({"vlan": 10, "vlanTrunk": [{"id": 11}]}, "vlanTrunk"),
        ({"vlanTrunk": [{"minID": 10}]}, "vlanTrunk"),
        ({"args": {"cni": {"mac": "not-a-mac"}}}, "mac"),
    ],
)
def test_invalid_config_is_code_7_naming_the_key(hl_lab, keys, named):
    lab = hl_lab
    ns = lab.container()
    run = lab.run("ADD", lab.conf(**keys), ns)
    assert run.rc == 1 and run.json["code"] == 7, run
    assert named in run.json["msg"] + run.json["details"]
    assert lab.link(lab.bridge) is None and lab.link("eth0", ns) is None
    lab.assert_nothing_left()


# ---- NAT -----------------------------------------------------------------------------------
def test_ipmasq_entries_gone_after_del_without_netns_or_prevresult(lab):
    ns = lab.container()
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), ipMasq=True, macspoofchk=True)
    out = lab.add(conf, ns)
    elements = lab.nft_elements()
    sets = sorted(e[1] for e in elements)
    assert sets == ["masq4", "masq4_local", "masq6", "masq6_local", "spoofchk_allowed", "spoofchk_ports"]
    owner = {e[3] for e in elements}
    assert len(owner) == 1 and re.fullmatch(r"[0-9a-f]{24}@[0-9a-f]{12}", owner.pop())  # endpoint@store
    assert ("inet", "masq4", "10.250.0.2", elements[0][3]) in elements
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    # the runtime lost the netns and the cached result: DEL still removes everything
    assert lab.run("DEL", conf, "").rc == 0
    lab.assert_nothing_left()


def test_masquerade_rewrites_traffic_leaving_the_subnet(hl_lab):
    """Real traffic: a container talks to an 'outside' address routed by the host; the
    outside sees the host's address, not the container's."""
    lab = hl_lab
    ns = lab.container()
    outside = lab.netns("cnmo")
    sh("ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", outside, ns=lab.host)
    sh("ip", "addr", "add", "192.0.2.1/24", "dev", "up0", ns=lab.host)
    sh("ip", "link", "set", "up0", "up", ns=lab.host)
    sh("ip", "addr", "add", "192.0.2.2/24", "dev", "out0", ns=outside)
    sh("ip", "link", "set", "out0", "up", ns=outside)
    conf = lab.conf(ipMasq=True, isDefaultGateway=True)
    lab.add(conf, ns)
    assert lab.ping(ns, "192.0.2.2")  # no route back to 10.250.0.0/24 outside: works only masqueraded
    assert lab.run("DEL", conf, ns).rc == 0
    conf_no = lab.conf(isDefaultGateway=True)
    lab.add(conf_no, ns, cid="c2")
    assert not lab.ping(ns, "192.0.2.2")
    assert lab.run("DEL", conf_no, ns, cid="c2").rc == 0


# ---- CHECK ---------------------------------------------------------------------------------
def test_check_names_the_first_mismatch(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(isGateway=True, ipMasq=True)
    out = lab.add(conf, ns)
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    missing = lab.run("CHECK", conf, ns)
    assert missing.rc == 1 and missing.json["msg"] == "Required prevResult missing"
    # nft entry removed by hand
    delete_nft_element(lab.host, "inet", "masq4", "10.250.0.2")
    bad = lab.run("CHECK", with_prev(conf, out), ns)
    assert bad.rc == 1 and "nftables" in bad.json["msg"], bad
    sh("ip", "link", "del", "eth0", ns=ns)
    bad = lab.run("CHECK", with_prev(conf, out), ns)
    assert bad.rc == 1 and bad.json["code"] == 103 and "not found" in bad.json["msg"], bad
    assert lab.run("DEL", conf, ns).rc == 0
    lab.assert_nothing_left()


# ---- rollback --------------------------------------------------------------------------------
def test_rollback_when_ifname_exists(lab):
    ns = lab.container()
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "notours0", ns=ns)
    conf = lab.conf(ipMasq=True, isGateway=True)
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and "already exists" in run.json["msg"], run
    assert lab.link("eth0", ns)["link"] == "notours0"  # not ours: untouched
    lab.assert_nothing_left()


def test_rollback_late_failure_bridge_has_other_address(lab):
    """The gateway address is applied late (after veth, addresses and routes): a bridge that
    already carries another IPv4 address fails the ADD there, and everything is undone."""
    sh("ip", "link", "add", lab.bridge, "type", "bridge", ns=lab.host)
    sh("ip", "addr", "add", "10.99.0.1/24", "dev", lab.bridge, ns=lab.host)
    ns = lab.container()
    conf = lab.conf(ipMasq=True, isGateway=True)
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and "already has an IP address" in run.json["details"], run
    assert lab.link("eth0", ns) is None
    lab.assert_nothing_left()
    out = lab.add(lab.conf(ipMasq=True, isGateway=True, forceAddress=True), ns)
    assert lab.addrs(lab.bridge, lab.host) == ["10.250.0.1/24"] and out["ips"][0]["gateway"] == "10.250.0.1"


def test_add_replaces_a_stale_host_veth(lab):
    """A host veth of this very endpoint left by an ADD whose record was lost (its peer
    elsewhere): the ADD replaces it."""
    host_name = "cnm" + endpoint_id(lab.network, "c1", "eth0")[:12]
    sh("ip", "link", "add", lab.bridge, "type", "bridge", ns=lab.host)
    sh("ip", "link", "add", host_name, "type", "veth", "peer", "name", "stale0", ns=lab.host)
    ns = lab.container()
    out = lab.add(lab.conf(isGateway=True), ns)
    assert out["interfaces"][1]["name"] == host_name
    port = lab.link(host_name)
    assert port["master"] == lab.bridge and "UP" in port["flags"] and "stale0" not in lab.links()
    assert lab.link("eth0", ns)["address"] == out["interfaces"][2]["mac"]
    assert lab.ping(ns, "10.250.0.1")
    assert lab.run("DEL", lab.conf(isGateway=True), ns).rc == 0
    lab.assert_nothing_left()


def test_conflict_leaves_a_stale_host_veth_alone(lab):
    """The container's ifname taken is a CONFLICT whatever else is there; nothing is changed."""
    host_name = "cnm" + endpoint_id(lab.network, "c1", "eth0")[:12]
    sh("ip", "link", "add", host_name, "type", "veth", "peer", "name", "stale0", ns=lab.host)
    ns = lab.container()
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "notours0", ns=ns)
    run = lab.run("ADD", lab.conf(ipMasq=True, isGateway=True), ns)
    assert run.rc == 1 and run.json["code"] == CONFLICT and "already exists" in run.json["msg"], run
    assert lab.link(host_name)["link"] == "stale0" and lab.link("eth0", ns)["link"] == "notours0"
    sh("ip", "link", "del", host_name, ns=lab.host)
    lab.assert_nothing_left()


def test_gateways_of_two_ipv4_ranges(hl_lab):
    """As the reference plugin: a bridge holds one IPv4 gateway, so the second range's is
    refused (forceAddress: it replaces the first's, added moments before)."""
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(isGateway=True, ipam=lab.ipam("10.250.0.0/24", "10.250.1.0/24"))
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and "different from 10.250.1.1/24" in run.json["details"], run
    lab.assert_nothing_left()
    conf["forceAddress"] = True
    out = lab.add(conf, ns)
    assert [ip["gateway"] for ip in out["ips"]] == ["10.250.0.1", "10.250.1.1"]
    assert lab.addrs(lab.bridge, lab.host) == ["10.250.1.1/24"]
    assert lab.run("DEL", conf, ns).rc == 0
    lab.assert_nothing_left()


def test_ipv6_gateways_replace_only_overlapping_addresses(hl_lab):
    """IPv6: a bridge address in another subnet stays, one overlapping the gateway's
    subnet is refused (forceAddress: replaced); the IPv4 gateway beside them is added."""
    lab = hl_lab
    sh("ip", "link", "add", lab.bridge, "type", "bridge", ns=lab.host)
    sh("ip", "addr", "add", "fd99::1/64", "dev", lab.bridge, "nodad", ns=lab.host)
    sh("ip", "addr", "add", "fd42::99/48", "dev", lab.bridge, "nodad", ns=lab.host)
    ns = lab.container()
    conf = lab.conf(isGateway=True, ipam=lab.ipam("10.250.0.0/24", "fd42::/64"))
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and "different from fd42::1/64" in run.json["details"], run
    assert lab.addrs(lab.bridge, lab.host) == ["10.250.0.1/24", "fd42::99/48", "fd99::1/64"]
    conf["forceAddress"] = True
    lab.add(conf, ns)
    assert sorted(lab.addrs(lab.bridge, lab.host)) == ["10.250.0.1/24", "fd42::1/64", "fd99::1/64"]
    assert lab.run("DEL", conf, ns).rc == 0
    lab.assert_nothing_left()


# ---- DEL without a record, concurrency -----------------------------------------------------
def test_del_without_record_still_cleans_kernel_and_lease(hl_lab):
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(ipMasq=True)
    lab.add(conf, ns)
    os.remove(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db"))  # the record is lost (crash, wiped state)
    assert lab.run("DEL", conf, "").rc == 0
    lab.assert_nothing_left()


def test_parallel_adds_race_for_the_bridge(hl_lab):
    lab = hl_lab
    conf = lab.conf(isGateway=True)
    spaces = [lab.container() for _ in range(4)]
    results = {}

    def add(i, ns):
        results[i] = lab.run("ADD", conf, ns, cid=f"c{i}")

    threads = [threading.Thread(target=add, args=(i, ns)) for i, ns in enumerate(spaces)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.rc == 0 for r in results.values()), results
    addresses = {r.json["ips"][0]["address"] for r in results.values()}
    assert len(addresses) == 4
    bridge_macs = {r.json["interfaces"][0]["mac"] for r in results.values()}
    assert bridge_macs == {lab.link(lab.bridge)["address"]}  # stable as ports came
    for i, ns in enumerate(spaces):
        assert lab.run("DEL", conf, ns, cid=f"c{i}").rc == 0
    lab.assert_nothing_left()


@pytest.mark.parametrize("where", ["empty", "missing", "not-a-netns"])
def test_del_without_a_usable_netns_releases_everything(lab, tmp_path, where):
    ns = lab.container()
    conf = lab.conf(ipMasq=True, macspoofchk=True)
    out = lab.add(conf, ns)
    path = {"empty": "", "missing": str(tmp_path / "gone"), "not-a-netns": str(tmp_path / "file")}[where]
    if where == "not-a-netns":
        open(path, "w").close()
    assert lab.run("DEL", with_prev(conf, out), path).rc == 0
    assert lab.run("DEL", conf, path).rc == 0
    lab.assert_nothing_left()


def test_gc_and_status_with_cnm_ipam(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    one = {"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10", "rangeEnd": "10.250.0.11"}
    conf = lab.conf("1.1.0", ipam=lab.ipam(one), ipMasq=True)
    status = lambda: lab.run("STATUS", conf, cid="", ifname="")  # noqa: E731
    assert status().rc == 0
    ns1, ns2 = lab.container(), lab.container()
    r1 = lab.add(conf, ns1, cid="c1")
    lab.add(conf, ns2, cid="c2")
    full = status()
    assert full.rc == 1 and full.json["code"] == 50, full  # the IPAM's answer, delegated
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert lab.run("GC", gc, cid="", ifname="").rc == 0
    assert lab.link("eth0", ns2) is None and lab.link("eth0", ns1) is not None
    assert len(lab.veths()) == 1 and [e[1] for e in lab.endpoints()] == ["c1"]
    assert {e[2] for e in lab.nft_elements() if e[1] == "masq4"} == {r1["ips"][0]["address"].split("/")[0]}
    assert status().rc == 0
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    lab.assert_nothing_left()


def test_status_delegates_to_ipam(hl_lab):
    lab = hl_lab
    run = lab.run("STATUS", lab.conf("1.1.0", ipam=lab.ipam() | {"type": "static"}), cid="", ifname="")
    # Debian's static (1.1.1) knows no STATUS and no 1.1.0 at all: not asked; no ADD of this
    # 1.1.0 config could succeed with it, which STATUS says (50, naming it)
    assert run.rc == 1 and run.json["code"] == 50 and "static" in run.json["msg"], run
    l2 = lab.run("STATUS", lab.conf("1.1.0", ipam={}), cid="", ifname="")
    assert l2.rc == 0 and l2.stdout == b"", l2


def test_macspoofchk_drops_frames_from_another_mac(hl_lab):
    lab = hl_lab
    ns1, ns2 = lab.container(), lab.container()
    conf = lab.conf(macspoofchk=True)
    lab.add(conf, ns1, cid="c1")
    r2 = lab.add(conf, ns2, cid="c2")
    peer = r2["ips"][0]["address"].split("/")[0]
    assert lab.ping(ns1, peer)
    sh("ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef", ns=ns1)  # spoof
    sh("ip", "neigh", "flush", "all", ns=ns2)
    assert not lab.ping(ns1, peer)
    for cid, ns in (("c1", ns1), ("c2", ns2)):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()


def test_enabledad_dual_stack_default_gateway_does_not_wait(hl_lab):
    """With DAD on, addresses start tentative; ADD neither waits nor fails on the IPv6 default route."""
    lab = hl_lab
    ns = lab.container()
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), isDefaultGateway=True, enabledad=True)
    out = lab.add(conf, ns)
    assert lab.sysctl("net.ipv6.conf.eth0.accept_dad", ns) == "1"
    assert lab.sysctl("net.ipv6.conf.eth0.enhanced_dad", ns) == "1"
    assert {"dst": "::/0", "gw": "fd00:250::1"} in out["routes"]
    assert [r for r in lab.routes(ns, "-6") if r["dst"] == "default"][0]["gateway"] == "fd00:250::1"
    assert lab.run("CHECK", with_prev(conf, out), ns).rc == 0
    assert lab.run("DEL", conf, ns).rc == 0
