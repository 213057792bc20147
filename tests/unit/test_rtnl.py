"""linux.rtnl's explicit methods build the very bytes pyroute2's IPRoute would send for the
call each replaces (pyroute2's IPBatch compiles IPRoute calls without sending them), and an
`Rtnl` has no other requests: the rest is asked of its `iproute` by name. The kernel side is in
tests/integration/test_rtnl_kernel.py."""

from __future__ import annotations

import struct

import pytest

import cni_plugins.linux  # noqa: F401  (pyroute2 without its package __init__)
from cni_plugins.linux import rtnl
from pyroute2.iproute.linux import IPBatch
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE

# (what the project calls, the IPRoute call that sends the same request, its message type)
REQUESTS = [
    (lambda r: r.get_link(ifname="eth0"), ("link", "get", {"ifname": "eth0"}), RTM_GETLINK),
    (lambda r: r.get_link(index=3), ("link", "get", {"index": 3}), RTM_GETLINK),
    (lambda r: r.del_link(ifname="cnm0123456789ab"), ("link", "del", {"ifname": "cnm0123456789ab"}), RTM_DELLINK),
    (lambda r: r.del_link(index=9), ("link", "del", {"index": 9}), RTM_DELLINK),
    (lambda r: r.set_link(3, up=True), ("link", "set", {"index": 3, "state": "up"}), RTM_NEWLINK),
    (lambda r: r.set_link(3, up=False), ("link", "set", {"index": 3, "state": "down"}), RTM_NEWLINK),
    (lambda r: r.set_link(3, address="02:42:0a:00:00:01"),
     ("link", "set", {"index": 3, "address": "02:42:0a:00:00:01"}), RTM_NEWLINK),
    (lambda r: r.set_link(3, ifalias="cnm owner"), ("link", "set", {"index": 3, "ifalias": "cnm owner"}), RTM_NEWLINK),
    (lambda r: r.add_veth("cnmh", "eth0", peer_netns_fd=5),
     ("link", "add", {"ifname": "cnmh", "kind": "veth", "peer": {"ifname": "eth0", "net_ns_fd": 5}}), RTM_NEWLINK),
    (lambda r: r.add_veth("cnmh", "eth1", peer_netns_fd=5, mtu=1400, peer_address="02:42:0a:00:00:05", master=7, up=True),
     ("link", "add", {"ifname": "cnmh", "kind": "veth", "mtu": 1400, "master": 7, "state": "up",
                      "peer": {"ifname": "eth1", "net_ns_fd": 5, "mtu": 1400, "address": "02:42:0a:00:00:05"}}),
     RTM_NEWLINK),
    (lambda r: r.add_address(3, "10.0.0.5", 24, broadcast="10.0.0.255"),
     ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 24, "broadcast": "10.0.0.255"}), RTM_NEWADDR),
    (lambda r: r.add_address(3, "10.0.0.5", 31), ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 31}),
     RTM_NEWADDR),
    (lambda r: r.add_address(3, "fd00::5", 64, flags=2),
     ("addr", "add", {"index": 3, "address": "fd00::5", "prefixlen": 64, "flags": 2}), RTM_NEWADDR),
    (lambda r: r.add_address(3, "fd00::5", 64), ("addr", "add", {"index": 3, "address": "fd00::5", "prefixlen": 64}),
     RTM_NEWADDR),
    (lambda r: r.add_route("0.0.0.0", 0, 3, gateway="10.0.0.1"),
     ("route", "add", {"dst": "0.0.0.0", "dst_len": 0, "oif": 3, "family": 2, "gateway": "10.0.0.1"}), RTM_NEWROUTE),
    (lambda r: r.add_route("10.1.0.0", 16, 3, priority=100),
     ("route", "add", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2, "priority": 100}), RTM_NEWROUTE),
    (lambda r: r.add_route("10.1.0.0", 16, 3, gateway="10.0.0.1", priority=5),
     ("route", "add", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2, "gateway": "10.0.0.1",
                       "priority": 5}), RTM_NEWROUTE),
    (lambda r: r.add_route("::", 0, 3, gateway="fd00::1"),
     ("route", "add", {"dst": "::", "dst_len": 0, "oif": 3, "family": 10, "gateway": "fd00::1"}), RTM_NEWROUTE),
    (lambda r: r.add_route("fd01::", 48, 3), ("route", "add", {"dst": "fd01::", "dst_len": 48, "oif": 3, "family": 10}),
     RTM_NEWROUTE),
]


class Captured(rtnl.Rtnl):
    """An Rtnl that records what it would send instead of sending it."""

    def __init__(self):
        self._iproute = None
        self.sent: list[tuple[bytes, int, int]] = []

    def _request(self, msg, msg_type, flags=0, **_):
        msg["header"]["type"] = msg_type
        msg.encode()
        self.sent.append((bytes(msg.data), msg_type, NLM_F_REQUEST | flags | NLM_F_ACK))
        return [msg] if msg_type == RTM_GETLINK else []  # a GET is answered with the link

    @property
    def iproute(self):
        raise AssertionError("an explicit method asked pyroute2's IPRoute")


def body(data: bytes) -> bytes:
    """The message without its header's flags, sequence number and port id."""
    return data[:6] + data[16:]


@pytest.fixture(scope="module")
def batch():
    b = IPBatch()
    yield b
    b.close()


@pytest.mark.parametrize("call,iproute_call,msg_type", REQUESTS,
                         ids=[f"{m}-{c}-{i}" for i, (_, (m, c, _), _) in enumerate(REQUESTS)])
def test_same_bytes_as_pyroute2(batch, call, iproute_call, msg_type):
    method, command, kw = iproute_call
    batch.reset()
    getattr(batch, method)(command, **kw)
    expected = bytes(batch.batch)
    mine = Captured()
    call(mine)
    [(data, sent_type, flags)] = mine.sent
    assert sent_type == msg_type
    assert struct.unpack_from("=H", expected, 4)[0] == msg_type
    assert body(data) == body(expected)
    # the same flags as IPRoute's (create + exclusive for "add"),
    # every request acknowledged, and no echo (a veth's facts are read by ioctl: linux/rtnl.py)
    expected_flags = struct.unpack_from("=H", expected, 6)[0]
    assert flags == expected_flags | NLM_F_ACK
    assert not flags & NLM_F_ECHO


def test_prepend_is_add_without_exclusive():
    """`ip route prepend` (IPRoute has no such command): "add"'s message without NLM_F_EXCL."""
    plain, prepend = Captured(), Captured()
    plain.add_route("10.1.0.0", 16, 3, gateway="10.0.0.1", priority=5)
    prepend.add_route("10.1.0.0", 16, 3, gateway="10.0.0.1", priority=5, prepend=True)
    [(data, _, flags)], [(prepended, _, prepend_flags)] = plain.sent, prepend.sent
    assert body(prepended) == body(data)
    assert prepend_flags == flags & ~NLM_F_EXCL and flags & NLM_F_EXCL and prepend_flags & NLM_F_CREATE


@pytest.mark.parametrize("name", ["link", "addr", "route", "get_links", "get_addr", "get_routes", "link_lookup",
                                  "brport", "vlan_filter", "request"])
def test_no_request_falls_through_to_iproute(name):
    """An Rtnl sends only what its own methods build: any other name is an AttributeError, never
    a silent call on pyroute2's IPRoute (which callers ask by name, as `rtnl.iproute.<call>`)
    (issue 22, item 3: a keyword too many at a call site changed the code path unseen)."""
    mine = Captured()
    with pytest.raises(AttributeError):
        getattr(mine, name)
    assert not hasattr(rtnl.Rtnl, "__getattr__")


def test_a_link_is_named_once():
    """By name or by index, never neither nor both (the kernel would pick one unseen)."""
    mine = Captured()
    for kw in ({}, {"ifname": "eth0", "index": 3}):
        with pytest.raises(TypeError):
            mine.get_link(**kw)
        with pytest.raises(TypeError):
            mine.del_link(**kw)
    assert mine.sent == []


def test_set_link_devconf_layout():
    """What the kernel's inet_set_link_af takes: IFLA_AF_SPEC > AF_INET > IFLA_INET_CONF > one
    u32 attribute per knob, typed by its IPV4_DEVCONF_* index (arp_notify: 22)."""
    mine = Captured()
    mine.set_link(7, up=True, ipv4_conf={"arp_notify": 1})
    [(data, msg_type, _flags)] = mine.sent
    assert msg_type == RTM_NEWLINK
    family, index, flags, change = struct.unpack_from("=BxxxiII", data, 16)
    assert (family, index, flags, change) == (0, 7, 1, 1)
    nlas = data[32:]
    assert struct.unpack_from("=HH", nlas, 0) == (len(nlas), 26)  # IFLA_AF_SPEC
    assert struct.unpack_from("=HH", nlas, 4) == (len(nlas) - 4, 2)  # AF_INET
    assert struct.unpack_from("=HH", nlas, 8) == (len(nlas) - 8, 1)  # IFLA_INET_CONF
    assert struct.unpack_from("=HHI", nlas, 12) == (8, 22, 1)  # arp_notify = 1
    assert len(nlas) == 20

    mine = Captured()
    mine.set_link(7)  # nothing asked: flags untouched, no attributes
    [(data, _, _)] = mine.sent
    assert struct.unpack_from("=BxxxiII", data, 16) == (0, 7, 0, 0) and len(data) == 32
