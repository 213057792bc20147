"""rtnetlink for the requests an ADD, CHECK and DEL send: pyroute2's messages on a plain socket.

pyroute2 0.9's IPRoute is a synchronous face on asyncio: opening one costs ~160 µs, and each
call starts the event loop and runs the request through a generic argument pipeline,
~130-400 µs per request (measured in a helper ADD: 2 sockets and 9 requests were ~2.5 ms of
its ~7 ms). `Rtnl` serves the few request shapes of that path itself: it builds pyroute2's
own message classes (ifinfmsg, ifaddrmsg, rtmsg) with the fields IPRoute would set (the
bytes are compared in tests/unit/test_rtnl.py), sends them on its own socket, and parses
the answer with pyroute2's marshal, whose NetlinkError it raises. Every other call (dumps,
bridge port flags, VLANs, lookups...) goes unchanged to a pyroute2 IPRoute in the same
netns, opened on first use, so callers see one IPRoute-like object.

A new veth is not echoed (NLM_F_ECHO): parsing the ~1.5 KiB link message pyroute2 makes of
the echo was ~0.4 ms of a ~3.5 ms helper ADD, while the three facts wanted from it (the host
end's index and MAC, the peer's index) are three ioctls (linux/links.py).

IPv4 knobs of a link (arp_notify), and IPv6's address generation mode, are set in the same
RTM_NEWLINK that brings it up (`set_link`), not through /proc/sys: a new netns's
/proc/sys/net/ipv4 is a lookup that walks one dentry per netns on the node (see
linux/sysctl.py), ~1 ms with 1,000 pods.
"""

from __future__ import annotations

import fcntl
import functools
import os
import socket

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, nla, nlmsg
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import netns

IFF_UP = 0x1
SIOCGSKNS = 0x894C  # the netns of a socket, as an fd
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what IPRoute's route("add") sets
RTN_UNICAST = 1
CREATE = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # IPRoute's flags for "add"
PREPEND = NLM_F_ACK | NLM_F_CREATE  # `ip route prepend`: beside a route of the same key, not EEXIST
RECV_SIZE = 65536  # one datagram: a link message is a few KiB
IFLA_AF_SPEC = 26
IFLA_IFALIAS = 20
IPV4_DEVCONF = {"arp_notify": 22}  # include/uapi/linux/ip.h: IPV4_DEVCONF_*, the knobs set here
IFLA_INET6_ADDR_GEN_MODE = 8  # include/uapi/linux/if_link.h
IN6_ADDR_GEN_MODE_NONE = 1  # no link-local (nor any SLAAC) address of its own

# The keyword sets served here; anything else is IPRoute's.
_VETH_KEYS = {"ifname", "kind", "peer", "mtu", "master", "address", "state"}
_PEER_KEYS = {"ifname", "net_ns_fd", "mtu", "address"}
_ADDR_KEYS = {"index", "address", "prefixlen", "broadcast", "flags"}
_ROUTE_KEYS = {"dst", "dst_len", "oif", "family", "gateway", "priority"}


class Rtnl:
    """An rtnetlink socket in one netns with IPRoute's call style (see the module doc)."""

    def __init__(self, netns_fd: int | None = None):
        self._ipr = None
        if netns_fd is None:
            self._sock = _socket()
        else:
            with netns.entered(netns_fd):
                self._sock = _socket()
        self._seq = 0
        self._marshal = _Marshal()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        self._sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ipr(self):
        """pyroute2's IPRoute in this socket's netns, for every request not served here."""
        if self._ipr is None:
            from pyroute2.iproute.linux import IPRoute

            fd = socket_netns(self._sock.fileno())
            try:
                with netns.entered(fd):
                    self._ipr = IPRoute()
            finally:
                os.close(fd)
        return self._ipr

    def __getattr__(self, name: str):  # only names this class does not define
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.ipr, name)

    # ---- the requests served here ---------------------------------------------------------
    def link(self, command: str, **kw):
        keys = kw.keys()
        if command in ("get", "del") and len(kw) == 1 and ("ifname" in kw or "index" in kw):
            return self.request(_ifinfmsg(kw), RTM_GETLINK if command == "get" else RTM_DELLINK)
        if command == "set" and keys == {"index", "state"} and kw["state"] in ("up", "down"):
            return self.set_link(kw["index"], up=kw["state"] == "up")
        if command == "set" and keys == {"index", "address"}:  # a bridge's MAC pinned (linux/bridge.py)
            msg = _ifinfmsg({"index": kw["index"]})
            msg["attrs"].append(("IFLA_ADDRESS", kw["address"]))
            return self.request(msg, RTM_NEWLINK)
        if (
            command == "add"
            and kw.get("kind") == "veth"
            and keys <= _VETH_KEYS
            and isinstance(kw.get("peer"), dict)
            and kw["peer"].keys() <= _PEER_KEYS
            and kw.get("state", "up") == "up"
        ):
            return self.request(_veth(kw), RTM_NEWLINK, CREATE)
        return self.ipr.link(command, **kw)

    def set_link(self, index: int, *, up: bool | None = None, ipv4_conf: dict[str, int] | None = None,
                 ipv6_addr_gen_mode: int | None = None, ifalias: str | None = None) -> list:
        """One RTM_NEWLINK: the link up or down (None: unchanged), IPv4 devconf knobs
        (`IPV4_DEVCONF` names), which the kernel applies as net.ipv4.conf.<link>.<knob>, and
        the IPv6 address generation mode (`ip link set ... addrgenmode`; IN6_ADDR_GEN_MODE_*).
        The kernel applies the flags before the rest: a link coming up here must have no
        carrier yet (a veth whose peer is down) for the mode to govern its first addresses."""
        msg = _devconf_link()
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        msg["attrs"] = []
        if ifalias is not None:
            msg["attrs"].append(("IFLA_IFALIAS", ifalias))
        families = []
        if ipv4_conf:
            families.append(("AF_INET", {"attrs": [("IFLA_INET_CONF", {"attrs": list(ipv4_conf.items())})]}))
        if ipv6_addr_gen_mode is not None:
            families.append(("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", ipv6_addr_gen_mode)]}))
        if families:
            msg["attrs"].append(("IFLA_AF_SPEC", {"attrs": families}))
        return self.request(msg, RTM_NEWLINK)

    def addr(self, command: str, **kw):
        keys = kw.keys()
        if command == "add" and keys <= _ADDR_KEYS and {"index", "address", "prefixlen"} <= keys:
            return self.request(_address(kw), RTM_NEWADDR, CREATE)
        return self.ipr.addr(command, **kw)

    def route(self, command: str, **kw):
        """"add" as IPRoute's; "prepend" as `ip route prepend` (no NLM_F_EXCL: a route to the
        same destination with the same metric through another nexthop is added beside it,
        first for IPv4, as a multipath nexthop for IPv6; only an identical one is EEXIST)."""
        keys = kw.keys()
        if command in ("add", "prepend") and keys <= _ROUTE_KEYS and {"dst", "dst_len", "oif", "family"} <= keys:
            return self.request(_route(kw), RTM_NEWROUTE, CREATE if command == "add" else PREPEND)
        return self.ipr.route(command, **kw)

    def request(self, msg, msg_type: int, flags: int = NLM_F_ACK) -> list:
        """Send `msg` and return the messages answered before its ACK; NetlinkError on error.

        Every request asks for an ACK, as IPRoute's do, so the answer always ends with one
        (a GET's answer comes before it)."""
        self._seq += 1
        header = msg["header"]
        header["type"] = msg_type
        header["flags"] = NLM_F_REQUEST | flags | NLM_F_ACK
        header["sequence_number"] = self._seq
        msg.encode()
        self._sock.send(msg.data)
        answers = []
        while True:
            for reply in self._marshal.parse(self._sock.recv(RECV_SIZE)):
                head = reply["header"]
                if head["sequence_number"] != self._seq:
                    continue  # an answer to an earlier request that gave up (none expected)
                if head["type"] == NLMSG_ERROR:
                    if head["error"] is not None:
                        raise head["error"]
                    return answers
                if head["type"] == NLMSG_DONE:
                    return answers
                answers.append(reply)


class _Marshal(Marshal):
    """pyroute2's parser for the answers to the requests served here, mapped as MarshalRtnl maps
    them (whose module imports pyroute2's socket layer and asyncio: ~20 ms of an in-process exec)."""

    msg_map = {
        RTM_NEWLINK: ifinfmsg,
        RTM_DELLINK: ifinfmsg,
        RTM_GETLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
    }


class _devconf_link(nlmsg):
    """An ifinfomsg whose IFLA_AF_SPEC sets IPv4 devconf the way the kernel takes it
    (inet_set_link_af): AF_INET > IFLA_INET_CONF > one u32 per knob, typed by its index;
    and IPv6's address generation mode (inet6_set_link_af): AF_INET6 > one u8.
    pyroute2's ifinfmsg knows only the dump layout (one flat struct), which a set rejects."""

    fields = ifinfmsg.fields
    nla_map = ((IFLA_IFALIAS, "IFLA_IFALIAS", "asciiz"), (IFLA_AF_SPEC, "IFLA_AF_SPEC", "af_spec"))

    class af_spec(nla):
        nla_map = ((socket.AF_INET, "AF_INET", "inet"), (socket.AF_INET6, "AF_INET6", "inet6"))

        class inet(nla):
            nla_map = ((1, "IFLA_INET_CONF", "conf"),)

            class conf(nla):
                nla_map = tuple((index, name, "uint32") for name, index in IPV4_DEVCONF.items())

        class inet6(nla):
            nla_map = ((IFLA_INET6_ADDR_GEN_MODE, "IFLA_INET6_ADDR_GEN_MODE", "uint8"),)


@functools.cache
def kernel_has_ipv6() -> bool:
    """Whether the kernel runs IPv6 (not booted with ipv6.disable=1): without it, a link has
    no IPv6 state and a request that sets any is refused whole (EAFNOSUPPORT)."""
    return os.path.exists("/proc/sys/net/ipv6")


def socket_netns(fileno: int) -> int:
    """A new descriptor of the netns socket `fileno` lives in (SIOCGSKNS); OSError if none."""
    return fcntl.ioctl(fileno, SIOCGSKNS)


def _socket() -> socket.socket:
    # No multicast groups (IPRoute joins the link/address/route groups by default): the
    # socket then hears only its own answers, not every change on the node.
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _ifinfmsg(kw: dict) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"] = kw.get("index", 0)
    attrs = []
    if "ifname" in kw:
        attrs.append(("IFLA_IFNAME", kw["ifname"]))
    msg["attrs"] = attrs
    return msg


def _veth(kw: dict) -> ifinfmsg:
    peer = kw["peer"]
    peer_attrs = [("IFLA_IFNAME", peer["ifname"])]
    if "net_ns_fd" in peer:
        peer_attrs.append(("IFLA_NET_NS_FD", peer["net_ns_fd"]))
    if "mtu" in peer:
        peer_attrs.append(("IFLA_MTU", peer["mtu"]))
    if "address" in peer:
        peer_attrs.append(("IFLA_ADDRESS", peer["address"]))
    msg = _ifinfmsg({"ifname": kw["ifname"]})
    if "state" in kw:
        msg["flags"] = msg["change"] = IFF_UP
    for key, nla in (("mtu", "IFLA_MTU"), ("master", "IFLA_MASTER"), ("address", "IFLA_ADDRESS")):
        if key in kw:
            msg["attrs"].append((nla, kw[key]))
    peer_msg = {"attrs": peer_attrs, "index": 0, "flags": 0, "change": 0}
    info = [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_msg)]})]
    msg["attrs"].append(("IFLA_LINKINFO", {"attrs": info}))
    return msg


def _address(kw: dict) -> ifaddrmsg:
    v6 = ":" in kw["address"]
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET6 if v6 else socket.AF_INET
    msg["prefixlen"] = kw["prefixlen"]
    msg["index"] = kw["index"]
    attrs = [("IFA_ADDRESS", kw["address"])]
    if kw.get("broadcast"):
        attrs.append(("IFA_BROADCAST", kw["broadcast"]))
    if not v6:
        attrs.append(("IFA_LOCAL", kw["address"]))
    if "flags" in kw:  # in IFA_FLAGS only (32 bits), as IPRoute sends them
        attrs.append(("IFA_FLAGS", kw["flags"]))
    msg["attrs"] = attrs
    return msg


def _route(kw: dict) -> rtmsg:
    msg = rtmsg()
    msg["family"] = kw["family"]
    msg["dst_len"] = kw["dst_len"]
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_STATIC
    msg["type"] = RTN_UNICAST
    attrs = []
    if kw["dst_len"]:
        attrs.append(("RTA_DST", kw["dst"]))
    attrs.append(("RTA_OIF", kw["oif"]))
    if kw.get("gateway"):
        attrs.append(("RTA_GATEWAY", kw["gateway"]))
    if kw.get("priority") is not None:
        attrs.append(("RTA_PRIORITY", kw["priority"]))
    msg["attrs"] = attrs
    return msg
