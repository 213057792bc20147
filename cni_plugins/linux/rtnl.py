"""rtnetlink: the requests of an ADD, CHECK and DEL on a socket of our own, pyroute2's IPRoute
for the rest.

`Rtnl` has one method per request the project makes itself (get, delete, set a link; create
a veth; add an address; add a route). Each builds pyroute2's own message class (ifinfmsg,
ifaddrmsg, rtmsg) with the fields IPRoute would set (tests/unit/test_rtnl.py compares the
bytes), sends it on a plain socket and parses the answer with pyroute2's marshal, whose
NetlinkError it raises. pyroute2 0.9's IPRoute is a synchronous face on asyncio with a
generic argument pipeline: opening one and each call through it cost more than the request
itself. Every other request (dumps, bridge creation,
port flags, VLANs, lookups, address deletion) goes to `Rtnl.iproute`, a pyroute2 IPRoute in
the same netns opened on first use: callers name it, nothing falls through.

A deleted link is gone once the kernel announces it (RTM_DELLINK): out of its netns, closed,
its addresses, MAC and master's port dropped, all under RTNL. The request itself returns only
after an RCU barrier that waits for the kernel to free the device (~15 ms here), which nothing
of ours or the runtime's needs, so `del_link` sends it from a thread of its own and returns at
the announcement (or at the answer, if that comes first: an error).

A new veth is not echoed (NLM_F_ECHO): pyroute2's parse of the link message is dearer than
the three facts wanted from it (the host end's index and MAC, the peer's index), which are
three ioctls (linux/links.py).

IPv4 knobs of a link (arp_notify), and IPv6's address generation mode, are set in the same
RTM_NEWLINK that brings it up (`set_link`), not through /proc/sys: a new netns's
/proc/sys/net/ipv4 is a lookup that walks one dentry per netns on the node (see
linux/sysctl.py).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import threading

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.marshal import Marshal
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import netns
from .ifreq import ioctl_index

IFF_UP = 0x1
SIOCGSKNS = 0x894C  # the netns of a socket, as an fd
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
RTNLGRP_LINK = 1
SENDER_CHECK_S = 1.0  # waiting for a deletion: how often to look whether its thread failed to send
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what IPRoute's route("add") sets
RTN_UNICAST = 1
CREATE = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # IPRoute's flags for "add"
PREPEND = NLM_F_ACK | NLM_F_CREATE  # `ip route prepend`: beside a route of the same key, not EEXIST
RECV_SIZE = 65536  # one datagram: a link message is a few KiB
IFLA_ADDRESS = 1
IFLA_AF_SPEC = 26
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IPV4_DEVCONF = {"arp_notify": 22}  # include/uapi/linux/ip.h: IPV4_DEVCONF_*, the knobs set here
IFLA_INET6_ADDR_GEN_MODE = 8  # include/uapi/linux/if_link.h
IN6_ADDR_GEN_MODE_NONE = 1  # no link-local (nor any SLAAC) address of its own


class Rtnl:
    """An rtnetlink socket in one netns: the project's own requests as methods, and
    `iproute` (pyroute2's IPRoute in the same netns) for everything else (see the module doc)."""

    def __init__(self, netns_fd: int | None = None):
        self._iproute = None
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
        if self._iproute is not None:
            self._iproute.close()
            self._iproute = None
        self._sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def iproute(self):
        """pyroute2's IPRoute in this socket's netns (whichever netns the calling thread is in
        by then), for every request without a method here. Opened on first use, closed with
        this object."""
        if self._iproute is None:
            from pyroute2.iproute.linux import IPRoute

            fd = socket_netns(self._sock.fileno())
            try:
                with netns.entered(fd):
                    self._iproute = IPRoute()
            finally:
                os.close(fd)
        return self._iproute

    # ---- the requests served on this socket ------------------------------------------------
    def get_link(self, *, ifname: str | None = None, index: int = 0):
        """The link named `ifname` or numbered `index` (one RTM_GETLINK), as pyroute2's
        ifinfmsg; NetlinkError (ENODEV) when there is none."""
        [link] = self._request(_link_msg(ifname, index), RTM_GETLINK)
        return link

    def del_link(self, *, ifname: str | None = None, index: int = 0) -> None:
        """Delete the link named `ifname` or numbered `index` (a veth: both ends);
        NetlinkError (ENODEV) when there is none. Returns once the kernel has announced the
        link gone, before it frees it (see the module doc)."""
        self._request(_link_msg(ifname, index), RTM_DELLINK, unlisting=True)

    def add_veth(self, ifname: str, peer: str, *, peer_netns_fd: int | None = None, mtu: int = 0,
                 peer_address: str | None = None, master: int = 0, up: bool = False) -> None:
        """Create veth `ifname` here and its peer `peer` in `peer_netns_fd` (default: here), in
        one RTM_NEWLINK (create, exclusive: EEXIST when either name is taken). `mtu` (0: the
        kernel's) is both ends'; `master` makes this end a port of that bridge, `up` brings
        it up; the peer stays down. Not echoed: the ends' indexes and MACs are ioctls."""
        msg = _link_msg(ifname, 0)
        if up:
            msg["flags"] = msg["change"] = IFF_UP
        peer_attrs = [("IFLA_IFNAME", peer)]
        if peer_netns_fd is not None:
            peer_attrs.append(("IFLA_NET_NS_FD", peer_netns_fd))
        if mtu:
            peer_attrs.append(("IFLA_MTU", mtu))
            msg["attrs"].append(("IFLA_MTU", mtu))
        if peer_address:
            peer_attrs.append(("IFLA_ADDRESS", peer_address))
        if master:
            msg["attrs"].append(("IFLA_MASTER", master))
        peer_msg = {"attrs": peer_attrs, "index": 0, "flags": 0, "change": 0}
        info = [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_msg)]})]
        msg["attrs"].append(("IFLA_LINKINFO", {"attrs": info}))
        self._request(msg, RTM_NEWLINK, CREATE)

    def add_macvlan(self, ifname: str, master: int, mode: int, *, netns_fd: int | None = None, mtu: int = 0,
                    address: str | None = None, bc_queue_len: int = 0) -> None:
        """Create macvlan `ifname` on link `master` (of this netns), down, in macvlan `mode`
        (MACVLAN_MODE_*), in netns `netns_fd` (default: here; the name is then checked there);
        `mtu` 0 and `bc_queue_len` 0: the kernel's (the master's MTU, its default broadcast
        queue). Exclusive (EEXIST when the name is taken)."""
        msg = _newmacvlanmsg()
        attrs = [("IFLA_IFNAME", ifname), ("IFLA_LINK", master)]
        if netns_fd is not None:
            attrs.append(("IFLA_NET_NS_FD", netns_fd))
        if mtu:
            attrs.append(("IFLA_MTU", mtu))
        if address:
            attrs.append(("IFLA_ADDRESS", address))
        data = [("IFLA_MACVLAN_MODE", mode)]
        if bc_queue_len:
            data.append(("IFLA_MACVLAN_BC_QUEUE_LEN", bc_queue_len))
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan"), ("IFLA_INFO_DATA", {"attrs": data})]}))
        msg["attrs"] = attrs
        self._request(msg, RTM_NEWLINK, CREATE)

    def move_link(self, index: int, netns_fd: int | None, ifname: str, *, alias: str | None = None,
                  ipv4_conf: dict[str, int] | None = None) -> None:
        """One RTM_NEWLINK on link `index`: into netns `netns_fd` (None: stays here), renamed
        `ifname` there, tagged with `alias` (the kernel moves, then renames, then sets the alias;
        a name taken there fails the rename, after the move), with IPv4 devconf knobs
        (`IPV4_DEVCONF` names) as set_link. A move between netns costs the kernel RCU grace
        periods (~15 ms): create links where they belong instead."""
        msg = _movelinkmsg()
        msg["index"] = index
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        if netns_fd is not None:
            msg["attrs"].append(("IFLA_NET_NS_FD", netns_fd))
        if alias is not None:
            msg["attrs"].append(("IFLA_IFALIAS", alias))
        if ipv4_conf:
            spec = [("AF_INET", {"attrs": [("IFLA_INET_CONF", {"attrs": list(ipv4_conf.items())})]})]
            msg["attrs"].append(("IFLA_AF_SPEC", {"attrs": spec}))
        self._request(msg, RTM_NEWLINK)

    def set_link(self, index: int, *, up: bool | None = None, address: str | None = None,
                 ipv4_conf: dict[str, int] | None = None, ipv6_addr_gen_mode: int | None = None,
                 ifalias: str | None = None) -> None:
        """One RTM_NEWLINK on link `index`: up or down (None: unchanged), its MAC `address`,
        its alias, IPv4 devconf knobs (`IPV4_DEVCONF` names), which the kernel applies as
        net.ipv4.conf.<link>.<knob>, and the IPv6 address generation mode (`ip link set ...
        addrgenmode`; IN6_ADDR_GEN_MODE_*). The kernel applies the flags before the rest: a
        link coming up here must have no carrier yet (a veth whose peer is down) for the mode
        to govern its first addresses."""
        msg = _setlinkmsg()
        msg["index"] = index
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        msg["attrs"] = []
        if address is not None:
            msg["attrs"].append(("IFLA_ADDRESS", address))
        if ifalias is not None:
            msg["attrs"].append(("IFLA_IFALIAS", ifalias))
        families = []
        if ipv4_conf:
            families.append(("AF_INET", {"attrs": [("IFLA_INET_CONF", {"attrs": list(ipv4_conf.items())})]}))
        if ipv6_addr_gen_mode is not None:
            families.append(("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", ipv6_addr_gen_mode)]}))
        if families:
            msg["attrs"].append(("IFLA_AF_SPEC", {"attrs": families}))
        self._request(msg, RTM_NEWLINK)

    def add_address(self, index: int, address: str, prefixlen: int, *, broadcast: str | None = None,
                    flags: int | None = None) -> None:
        """Add `address`/`prefixlen` to link `index` (create, exclusive: EEXIST when the link
        has it). `flags` (IFA_F_*) go in IFA_FLAGS only, as IPRoute sends them."""
        v6 = ":" in address
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET6 if v6 else socket.AF_INET
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        attrs = [("IFA_ADDRESS", address)]
        if broadcast:
            attrs.append(("IFA_BROADCAST", broadcast))
        if not v6:
            attrs.append(("IFA_LOCAL", address))
        if flags is not None:
            attrs.append(("IFA_FLAGS", flags))
        msg["attrs"] = attrs
        self._request(msg, RTM_NEWADDR, CREATE)

    def add_route(self, dst: str, dst_len: int, oif: int, *, gateway: str | None = None,
                  priority: int | None = None, prepend: bool = False) -> None:
        """Add a static unicast route of the main table to `dst`/`dst_len` through link `oif`
        (the family is `dst`'s). Exclusive, as IPRoute's "add" (EEXIST when the table has a
        route of that key); with `prepend`, as `ip route prepend`: a route to the same
        destination with the same metric through another nexthop is added beside it, first
        for IPv4, as a multipath nexthop for IPv6; only an identical one is EEXIST."""
        msg = rtmsg()
        msg["family"] = socket.AF_INET6 if ":" in dst else socket.AF_INET
        msg["dst_len"] = dst_len
        msg["table"] = RT_TABLE_MAIN
        msg["proto"] = RTPROT_STATIC
        msg["type"] = RTN_UNICAST
        attrs = []
        if dst_len:
            attrs.append(("RTA_DST", dst))
        attrs.append(("RTA_OIF", oif))
        if gateway:
            attrs.append(("RTA_GATEWAY", gateway))
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        msg["attrs"] = attrs
        self._request(msg, RTM_NEWROUTE, PREPEND if prepend else CREATE)

    def _request(self, msg, msg_type: int, flags: int = NLM_F_ACK, unlisting: bool = False) -> list:
        """Send `msg` and return the messages answered before its ACK; NetlinkError on error.

        Every request asks for an ACK, as IPRoute's do, so the answer always ends with one
        (a GET's answer comes before it). `unlisting` (a link deletion): see _unlist."""
        self._seq += 1
        header = msg["header"]
        header["type"] = msg_type
        header["flags"] = NLM_F_REQUEST | flags | NLM_F_ACK
        header["sequence_number"] = self._seq
        msg.encode()
        if unlisting:
            self._unlist(msg)
            return []
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

    def _unlist(self, msg) -> None:
        """Send the link deletion `msg` from a thread of its own (on a duplicate of this
        socket: its answer still comes here) and return at the kernel's RTM_DELLINK of the
        link, heard on this socket, or at the answer if that comes first. The thread ends with
        the request; a process that exits or is killed meanwhile does not undo it (the kernel
        finishes a request it has begun)."""
        index = msg["index"] or self._index_of(msg.get_attr("IFLA_IFNAME"))
        sender = None
        unlisted = False
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)
        try:
            sender = _Sender(os.dup(self._sock.fileno()), msg.data)
            sender.start()
            unlisted = self._await_unlisted(index, sender)
        finally:
            self._sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, RTNLGRP_LINK)
            if sender is not None and sender.ident is not None and not unlisted:
                sender.join()  # its answer is then queued here, unless the overflow dropped it
            # The news still queued could fill the socket: the kernel would drop the next
            # request's answer, which that request would wait for forever.
            answer = self._drain()
        if unlisted:
            return
        # Announcements were lost (the socket overflowed with other links' news): the answer
        # tells, if it was not dropped too; else ask the kernel.
        if sender.error is not None:
            raise sender.error
        if answer is not None:
            if answer["error"] is not None:
                raise answer["error"]
            return
        if index and self._exists(index):
            raise NetlinkError(errno.EIO, f"link {index} still exists after its deletion")

    def _drain(self):
        """Read away whatever is queued on this socket (ENOBUFS included); the header of the
        current request's answer if it was among it, else None."""
        answer = None
        self._sock.setblocking(False)
        try:
            while True:
                try:
                    data = self._sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return answer
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        continue
                    raise
                for reply in _NewsMarshal().parse(data):
                    head = reply["header"]
                    if head["type"] == NLMSG_ERROR and head["sequence_number"] == self._seq:
                        answer = head
        finally:
            self._sock.setblocking(True)

    def _await_unlisted(self, index: int, sender: "_Sender") -> bool:
        """True at the RTM_DELLINK of link `index` or the request's ACK (its error raised);
        False when this socket lost messages (ENOBUFS)."""
        self._sock.settimeout(SENDER_CHECK_S)
        try:
            while True:
                try:
                    data = self._sock.recv(RECV_SIZE)
                except TimeoutError:
                    if sender.is_alive():
                        continue
                    if sender.error is not None:
                        raise sender.error from None
                    return False
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        return False
                    raise
                for reply in _NewsMarshal().parse(data):
                    head = reply["header"]
                    if head["type"] == NLMSG_ERROR and head["sequence_number"] == self._seq:
                        if head["error"] is not None:
                            raise head["error"]
                        return True
                    # (family AF_UNSPEC: the link's unregistering; a bridge port's removal is AF_BRIDGE)
                    if head["type"] == RTM_DELLINK and index and reply["index"] == index and reply["family"] == 0:
                        return True
        finally:
            self._sock.settimeout(None)

    def _index_of(self, ifname: str | None) -> int:
        """The index of link `ifname` here, 0 when there is none."""
        if not ifname or len(ifname.encode()) > 15:
            return 0
        try:
            return ioctl_index(self._sock, ifname)
        except OSError:
            return 0

    def _exists(self, index: int) -> bool:
        try:
            self.get_link(index=index)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True


class _Sender(threading.Thread):
    """Writes one request on its own descriptor of the socket, then closes it."""

    def __init__(self, fd: int, data: bytes):
        super().__init__(name="cnm-rtnl-send")
        self.fd, self.data = fd, bytes(data)
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            os.write(self.fd, self.data)
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.fd)


class _linkhead(nlmsg):
    """An ifinfomsg without its attributes: which link a notification is about, cheaply (a
    full link message costs pyroute2 ~0.2 ms to parse; a deletion hears every link's news)."""

    fields = ifinfmsg.fields
    nla_map = ()


class _NewsMarshal(Marshal):
    msg_map = {RTM_NEWLINK: _linkhead, RTM_DELLINK: _linkhead}


class _Marshal(Marshal):
    """pyroute2's parser for the answers to the requests served here, mapped as MarshalRtnl maps
    them (whose module imports pyroute2's socket layer and asyncio)."""

    msg_map = {
        RTM_NEWLINK: ifinfmsg,
        RTM_DELLINK: ifinfmsg,
        RTM_GETLINK: ifinfmsg,
        RTM_NEWADDR: ifaddrmsg,
        RTM_NEWROUTE: rtmsg,
    }


class _setlinkmsg(nlmsg):
    """The ifinfomsg of `Rtnl.set_link`: its IFLA_AF_SPEC sets IPv4 devconf the way the kernel
    takes it (inet_set_link_af): AF_INET > IFLA_INET_CONF > one u32 per knob, typed by its
    index; and IPv6's address generation mode (inet6_set_link_af): AF_INET6 > one u8.
    pyroute2's ifinfmsg knows only the dump layout (one flat struct), which a set rejects."""

    fields = ifinfmsg.fields
    nla_map = (
        (IFLA_ADDRESS, "IFLA_ADDRESS", "l2addr"),
        (IFLA_IFALIAS, "IFLA_IFALIAS", "asciiz"),
        (IFLA_AF_SPEC, "IFLA_AF_SPEC", "af_spec"),
    )

    class af_spec(nla):
        nla_map = ((socket.AF_INET, "AF_INET", "inet"), (socket.AF_INET6, "AF_INET6", "inet6"))

        class inet(nla):
            nla_map = ((1, "IFLA_INET_CONF", "conf"),)

            class conf(nla):
                nla_map = tuple((index, name, "uint32") for name, index in IPV4_DEVCONF.items())

        class inet6(nla):
            nla_map = ((IFLA_INET6_ADDR_GEN_MODE, "IFLA_INET6_ADDR_GEN_MODE", "uint8"),)


class _newmacvlanmsg(nlmsg):
    """The ifinfomsg of `Rtnl.add_macvlan`: pyroute2's macvlan data lacks the broadcast queue
    length (IFLA_MACVLAN_BC_QUEUE_LEN, kernel 5.11)."""

    fields = ifinfmsg.fields
    nla_map = (
        (IFLA_ADDRESS, "IFLA_ADDRESS", "l2addr"),
        (IFLA_IFNAME, "IFLA_IFNAME", "asciiz"),
        (IFLA_MTU, "IFLA_MTU", "uint32"),
        (IFLA_LINK, "IFLA_LINK", "uint32"),
        (IFLA_LINKINFO, "IFLA_LINKINFO", "linkinfo"),
        (IFLA_NET_NS_FD, "IFLA_NET_NS_FD", "uint32"),
    )

    class linkinfo(nla):
        nla_map = ((1, "IFLA_INFO_KIND", "asciiz"), (2, "IFLA_INFO_DATA", "macvlan"))

        class macvlan(nla):
            nla_map = ((1, "IFLA_MACVLAN_MODE", "uint32"), (7, "IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"))


class _movelinkmsg(nlmsg):
    """The ifinfomsg of `Rtnl.move_link`."""

    fields = ifinfmsg.fields
    nla_map = (
        (IFLA_IFNAME, "IFLA_IFNAME", "asciiz"),
        (IFLA_IFALIAS, "IFLA_IFALIAS", "asciiz"),
        (IFLA_NET_NS_FD, "IFLA_NET_NS_FD", "uint32"),
        (IFLA_AF_SPEC, "IFLA_AF_SPEC", "af_spec"),
    )
    af_spec = _setlinkmsg.af_spec


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


def _link_msg(ifname: str | None, index: int) -> ifinfmsg:
    """An ifinfomsg naming a link by `ifname` or by `index` (exactly one)."""
    if (ifname is None) == (not index):
        raise TypeError("name a link by ifname or by index")
    msg = ifinfmsg()
    msg["index"] = index
    msg["attrs"] = [("IFLA_IFNAME", ifname)] if ifname is not None else []
    return msg
