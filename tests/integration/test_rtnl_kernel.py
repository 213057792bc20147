"""linux.rtnl on the kernel: the requests it serves itself do what IPRoute's did (checked with
`ip`), a new veth's index, MAC and peer's index are read by ioctl (no echo to parse),
errors are pyroute2's NetlinkError with the kernel's code, and everything else goes to an
IPRoute in the socket's own netns, whichever netns the calling thread is in by then.
Each case runs in throwaway netns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time

import pytest

from cni_plugins.linux import links
from cni_plugins.linux import netns as nsmod
from cni_plugins.linux.rtnl import Rtnl
from conftest import in_netns
from pyroute2.netlink.exceptions import NetlinkError


def ip_json(ns: str, *args: str):
    out = subprocess.run(["ip", "-n", os.path.basename(ns), "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", os.path.basename(ns), *args], capture_output=True, text=True, check=True)


def test_veth_is_created_configured_and_found_by_ioctl(netns):
    host, container = netns("cnmrh"), netns("cnmrc")
    ip(host, "link", "add", "cnmrbr", "type", "bridge")
    bridge = ip_json(host, "link", "show", "dev", "cnmrbr")[0]["ifindex"]

    def go():
        fd = nsmod.open_netns(container)
        try:
            with Rtnl() as r, Rtnl(fd) as c:
                answer = r.link("add", ifname="cnmrv0", kind="veth", mtu=1400, master=bridge,
                                peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": 1400, "address": "02:42:0a:00:00:07"})
                found = links.ioctl_index(r, "cnmrv0"), links.ioctl_mac(r, "cnmrv0"), links.ioctl_index(c, "eth0")
                with pytest.raises(OSError) as gone:
                    links.ioctl_index(c, "cnmrv0")  # the host end is not in the container's netns
                return answer, found, gone.value.errno
        finally:
            os.close(fd)

    answer, (index, mac, peer_index), missing = in_netns(host, go)
    assert answer == [] and missing == errno.ENODEV
    end = ip_json(host, "-d", "link", "show", "dev", "cnmrv0")[0]
    assert (index, mac) == (end["ifindex"], end["address"])
    assert end["master"] == "cnmrbr" and end["mtu"] == 1400 and "UP" not in end["flags"]
    peer = ip_json(container, "link", "show", "dev", "eth0")[0]
    assert peer_index == peer["ifindex"] and peer["address"] == "02:42:0a:00:00:07" and peer["mtu"] == 1400


def veth_pair(netns) -> tuple[str, int, int]:
    """A throwaway netns holding the pair eth0/eth1: (netns, eth0's index, eth1's index)."""
    ns = netns("cnmrc")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    return ns, ip_json(ns, "link", "show", "dev", "eth0")[0]["ifindex"], ip_json(ns, "link", "show", "dev", "eth1")[0]["ifindex"]


def test_container_side_requests(netns):
    ns, index, peer = veth_pair(netns)

    def go():
        with Rtnl() as r:
            [link] = r.link("get", ifname="eth0")
            assert link["index"] == index
            r.link("set", index=index, state="up")
            r.link("set", index=peer, state="up")  # a carrier for the routes
            r.addr("add", index=index, address="10.251.3.5", prefixlen=24, broadcast="10.251.3.255")
            r.addr("add", index=index, address="fd00:251::5", prefixlen=64, flags=0x02)  # IFA_F_NODAD
            r.route("add", dst="0.0.0.0", dst_len=0, oif=index, family=2, gateway="10.251.3.1")
            r.route("add", dst="10.252.0.0", dst_len=16, oif=index, family=2, priority=7)
            with pytest.raises(NetlinkError) as exists:
                r.addr("add", index=index, address="10.251.3.5", prefixlen=24)
            with pytest.raises(NetlinkError) as missing:
                r.link("get", ifname="nosuchlink")
            return exists.value.code, missing.value.code

    assert in_netns(ns, go) == (errno.EEXIST, errno.ENODEV)
    assert "UP" in ip_json(ns, "link", "show", "dev", "eth0")[0]["flags"]
    addrs = {(a["local"], a["prefixlen"]): a for a in ip_json(ns, "addr", "show", "dev", "eth0")[0]["addr_info"]}
    assert addrs[("10.251.3.5", 24)]["broadcast"] == "10.251.3.255"
    assert addrs[("fd00:251::5", 64)].get("nodad") is True
    routes = {r["dst"]: r for r in ip_json(ns, "route", "show", "dev", "eth0")}
    assert routes["default"]["gateway"] == "10.251.3.1" and routes["default"]["protocol"] == "static"
    assert routes["10.252.0.0/16"]["metric"] == 7


def test_set_link_up_with_ipv4_devconf(netns):
    """One RTM_NEWLINK brings the link up and sets net.ipv4.conf.<link>.arp_notify; without
    `up` the flags are left alone; the other end of the pair is untouched."""
    ns, index, peer = veth_pair(netns)

    def go():
        with Rtnl() as r:
            r.set_link(index, up=True, ipv4_conf={"arp_notify": 1})
            r.set_link(peer, ipv4_conf={"arp_notify": 0})
            r.link("set", index=peer, address="02:42:0a:00:00:09")  # as a bridge's MAC is pinned
            with pytest.raises(NetlinkError) as missing:
                r.set_link(99999, up=True)
            return missing.value.code

    def knob(link):
        return in_netns(ns, lambda: open(f"/proc/sys/net/ipv4/conf/{link}/arp_notify").read().strip())

    assert in_netns(ns, go) == errno.ENODEV
    assert (knob("eth0"), knob("eth1")) == ("1", "0")
    assert "UP" in ip_json(ns, "link", "show", "dev", "eth0")[0]["flags"]
    peer_link = ip_json(ns, "link", "show", "dev", "eth1")[0]
    assert "UP" not in peer_link["flags"] and peer_link["address"] == "02:42:0a:00:00:09"


def test_set_link_ipv6_addr_gen_mode(netns):
    """The same RTM_NEWLINK sets IPv4 devconf and IPv6's address generation mode: with `none`
    the link gets no link-local address when its carrier comes; eth1 (unset) gets one."""
    ns, index, peer = veth_pair(netns)

    def go():
        with Rtnl() as r:
            r.set_link(index, up=True, ipv4_conf={"arp_notify": 1}, ipv6_addr_gen_mode=1)
            r.set_link(peer, up=True)

    in_netns(ns, go)

    def link_local(name):
        out = ip_json(ns, "-6", "addr", "show", "dev", name)  # [] when it has none
        return out[0].get("addr_info", []) if out else []

    for _ in range(100):  # eth1's link-local appears once the carrier is up: then eth0 had its chance
        if link_local("eth1"):
            break
        time.sleep(0.05)
    assert link_local("eth1") and not link_local("eth0")
    assert ip_json(ns, "-d", "link", "show", "dev", "eth0")[0]["inet6_addr_gen_mode"] == "none"
    assert ip_json(ns, "-d", "link", "show", "dev", "eth1")[0]["inet6_addr_gen_mode"] != "none"
    assert in_netns(ns, lambda: open("/proc/sys/net/ipv4/conf/eth0/arp_notify").read().strip()) == "1"


def test_delete_by_name(netns):
    ns = netns("cnmrc")
    ip(ns, "link", "add", "cnmrv0", "type", "veth", "peer", "name", "cnmrv1")

    def go():
        with Rtnl() as r:
            r.link("del", ifname="cnmrv0")
            with pytest.raises(NetlinkError) as gone:
                r.link("del", ifname="cnmrv0")
            return gone.value.code

    assert in_netns(ns, go) == errno.ENODEV
    assert [link["ifname"] for link in ip_json(ns, "link", "show")] == ["lo"]  # both ends gone


def test_other_requests_go_to_iproute_in_the_sockets_netns(netns):
    """The IPRoute is opened on first use, in the netns the socket was made in, even when the
    calling thread has moved elsewhere meanwhile (as a helper worker does)."""
    mine, elsewhere = netns("cnmrc"), netns("cnmro")
    ip(mine, "link", "add", "cnmrd0", "type", "veth", "peer", "name", "cnmrd1")
    ip(mine, "addr", "add", "10.251.9.1/24", "dev", "cnmrd0")
    ip(elsewhere, "link", "add", "cnmrd0", "type", "veth", "peer", "name", "cnmrd1")
    ip(elsewhere, "addr", "add", "10.251.8.1/24", "dev", "cnmrd0")

    def go():
        fd = nsmod.open_netns(mine)
        try:
            r = Rtnl(fd)  # made in `mine`; this thread stays in `elsewhere`
        finally:
            os.close(fd)
        try:
            seen = sorted(m.get_attr("IFA_ADDRESS") for m in r.get_addr(family=2))
            return seen, r.fileno() >= 0
        finally:
            r.close()

    seen, _ = in_netns(elsewhere, go)
    assert seen == ["10.251.9.1"]


def test_primary_ipv4_by_ioctl(netns):
    """linux.addr.primary_ipv4 (the bridge gateway's steady-state check) names the link's primary
    IPv4 address and prefix as the kernel holds them, in the calling thread's netns."""
    from cni_plugins.linux import addr

    ns = netns("cnmra")
    ip(ns, "link", "add", "cnmrd0", "type", "bridge")
    ip(ns, "link", "add", "cnmrd1", "type", "bridge")
    ip(ns, "addr", "add", "10.253.4.1/22", "dev", "cnmrd0")
    ip(ns, "addr", "add", "10.253.4.9/22", "dev", "cnmrd0")  # a secondary: not the primary
    ip(ns, "addr", "add", "fd00:253::1/64", "dev", "cnmrd1")  # IPv6 only: no IPv4 to name
    got = in_netns(ns, lambda: [addr.primary_ipv4(n) for n in ("cnmrd0", "cnmrd1", "cnmrnone")])
    assert got == ["10.253.4.1/22", None, None]
    assert addr.primary_ipv4("cnmrd0") is None  # not in the test's own netns
    ip(ns, "addr", "del", "10.253.4.1/22", "dev", "cnmrd0")  # the secondary is promoted (or flushed)
    promoted = ip_json(ns, "-4", "addr", "show", "dev", "cnmrd0")
    expect = [f"{a['local']}/{a['prefixlen']}" for link in promoted for a in link["addr_info"]][:1] or [None]
    assert in_netns(ns, lambda: addr.primary_ipv4("cnmrd0")) == expect[0]
