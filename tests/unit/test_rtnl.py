"""linux.rtnl builds, for the request shapes it serves itself, the very bytes pyroute2's
IPRoute would send (pyroute2's IPBatch compiles IPRoute calls without sending them), and
hands every other shape to IPRoute. The kernel side is in tests/integration/test_rtnl_kernel.py."""

from __future__ import annotations

import struct

import pytest

import cni_plugins.linux  # noqa: F401  (pyroute2 without its package __init__)
from cni_plugins.linux import rtnl
from pyroute2.iproute.linux import IPBatch
from pyroute2.netlink import NLM_F_ECHO
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE

SHAPES = [
    ("link", "get", {"ifname": "eth0"}, RTM_GETLINK),
    ("link", "get", {"index": 3}, RTM_GETLINK),
    ("link", "del", {"ifname": "cnm0123456789ab"}, RTM_DELLINK),
    ("link", "del", {"index": 9}, RTM_DELLINK),
    ("link", "set", {"index": 3, "state": "up"}, RTM_NEWLINK),
    ("link", "set", {"index": 3, "state": "down"}, RTM_NEWLINK),
    ("link", "set", {"index": 3, "address": "02:42:0a:00:00:01"}, RTM_NEWLINK),
    ("link", "add", {"ifname": "cnmh", "kind": "veth", "peer": {"ifname": "eth0", "net_ns_fd": 5}}, RTM_NEWLINK),
    ("link", "add", {"ifname": "cnmh", "kind": "veth", "mtu": 1400, "master": 7, "state": "up",
                     "peer": {"ifname": "eth1", "net_ns_fd": 5, "mtu": 1400, "address": "02:42:0a:00:00:05"}},
     RTM_NEWLINK),
    ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 24, "broadcast": "10.0.0.255"}, RTM_NEWADDR),
    ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 31}, RTM_NEWADDR),
    ("addr", "add", {"index": 3, "address": "fd00::5", "prefixlen": 64, "flags": 2}, RTM_NEWADDR),
    ("addr", "add", {"index": 3, "address": "fd00::5", "prefixlen": 64}, RTM_NEWADDR),
    ("route", "add", {"dst": "0.0.0.0", "dst_len": 0, "oif": 3, "family": 2, "gateway": "10.0.0.1"}, RTM_NEWROUTE),
    ("route", "add", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2, "priority": 100}, RTM_NEWROUTE),
    ("route", "add", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2, "gateway": "10.0.0.1",
                      "priority": 5}, RTM_NEWROUTE),
    ("route", "add", {"dst": "::", "dst_len": 0, "oif": 3, "family": 10, "gateway": "fd00::1"}, RTM_NEWROUTE),
    ("route", "add", {"dst": "fd01::", "dst_len": 48, "oif": 3, "family": 10}, RTM_NEWROUTE),
]


class Captured(rtnl.Rtnl):
    """An Rtnl that records what it would send instead of sending it."""

    def __init__(self):
        self._ipr = None
        self.sent: list[tuple[bytes, int, int]] = []

    def request(self, msg, msg_type, flags=0):
        msg["header"]["type"] = msg_type
        msg.encode()
        self.sent.append((bytes(msg.data), msg_type, flags))
        return []

    @property
    def ipr(self):
        raise AssertionError("this shape should have been served by Rtnl itself")


def body(data: bytes) -> bytes:
    """The message without its header's flags, sequence number and port id."""
    return data[:6] + data[16:]


@pytest.fixture(scope="module")
def batch():
    b = IPBatch()
    yield b
    b.close()


@pytest.mark.parametrize("method,command,kw,msg_type", SHAPES, ids=lambda v: v if isinstance(v, str) else None)
def test_same_bytes_as_pyroute2(batch, method, command, kw, msg_type):
    batch.reset()
    getattr(batch, method)(command, **kw)
    expected = bytes(batch.batch)
    mine = Captured()
    getattr(mine, method)(command, **kw)
    [(data, sent_type, flags)] = mine.sent
    assert sent_type == msg_type
    assert struct.unpack_from("=H", expected, 4)[0] == msg_type
    assert body(data) == body(expected)
    # the creating requests ask what IPRoute asks (create + exclusive), and no echo (a veth's
    # facts are read by ioctl: linux/rtnl.py)
    expected_flags = struct.unpack_from("=H", expected, 6)[0]
    if command == "add":
        assert flags & expected_flags & ~0x1 == expected_flags & ~0x1
    assert not flags & NLM_F_ECHO


@pytest.mark.parametrize(
    "method,command,kw",
    [
        ("link", "get", {"ifname": "eth0", "index": 3}),
        ("link", "set", {"index": 3, "mtu": 1400}),
        ("link", "set", {"index": 3, "state": "up", "master": 4}),
        ("link", "add", {"ifname": "br0", "kind": "bridge"}),
        ("link", "add", {"ifname": "v0", "kind": "veth", "peer": {"ifname": "v1", "net_ns_pid": 1}}),
        ("link", "add", {"ifname": "v0", "kind": "veth", "peer": "v1"}),
        ("addr", "del", {"index": 3, "address": "10.0.0.5", "prefixlen": 24}),
        ("addr", "add", {"index": 3, "address": "10.0.0.5", "prefixlen": 24, "scope": 253}),
        ("route", "add", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2, "table": 100}),
        ("route", "del", {"dst": "10.1.0.0", "dst_len": 16, "oif": 3, "family": 2}),
        ("brport", "set", {"index": 3, "mode": 1}),
    ],
)
def test_other_shapes_go_to_iproute(method, command, kw):
    calls = []

    class Recorder:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a, k))

    mine = Captured()
    mine._ipr = Recorder()
    type(mine).ipr = property(lambda self: self._ipr)  # this instance's class only
    try:
        getattr(mine, method)(command, **kw)
    finally:
        del type(mine).ipr
    assert mine.sent == []
    assert calls == [(method, (command,), kw)]


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
