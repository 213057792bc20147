"""Links, addresses and routes through pyroute2 (imported here, never on the entry path)."""

from __future__ import annotations

import fcntl
import socket
import struct

from pyroute2.netlink.exceptions import NetlinkError

from .ifreq import ifreq, ioctl_index  # noqa: F401 -- (their home was here)
from .rtnl import Rtnl

IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254


def rtnl(netns_fd: int | None = None) -> Rtnl:
    """An rtnetlink socket bound to `netns_fd` (or to this thread's netns): the requests of an
    ADD/CHECK/DEL as its methods, the rest through its `iproute`, a pyroute2 IPRoute opened
    when first needed (linux/rtnl.py). Use it in a `with` block."""
    return Rtnl(netns_fd)


def ioctl_flags(sock, name: str) -> int:
    return struct.unpack_from("H", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq(name)), 16)[0]


def ioctl_mtu(sock, name: str) -> int:
    return struct.unpack_from("i", fcntl.ioctl(sock.fileno(), SIOCGIFMTU, ifreq(name)), 16)[0]


def ioctl_mac(sock, name: str) -> str:
    """The hardware address of link `name` in the netns of `sock`, as "aa:bb:..."."""
    return ":".join(f"{b:02x}" for b in fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, ifreq(name))[18:24])


def link_index(ipr, name: str) -> int | None:
    try:
        found = ipr.iproute.link_lookup(ifname=name)
    except NetlinkError:
        return None
    return found[0] if found else None


def get_link(ipr, name: str):
    """The link named `name` (one RTM_GETLINK by name), None when there is none."""
    try:
        return ipr.get_link(ifname=name)
    except NetlinkError:
        return None


def is_up(link) -> bool:
    return bool(link["flags"] & IFF_UP)


def set_up(ipr, name: str, up: bool = True) -> None:
    idx = link_index(ipr, name)
    if idx is None:
        raise LookupError(f"link {name} not found")
    ipr.set_link(idx, up=up)


def addresses(ipr, index: int | None = None) -> list[tuple[int, str, int, int]]:
    """(ifindex, address, prefixlen, scope) of every address, optionally of one link."""
    kwargs = {"index": index} if index is not None else {}
    out = []
    for msg in ipr.iproute.get_addr(**kwargs):
        out.append((msg["index"], msg.get_attr("IFA_ADDRESS"), msg["prefixlen"], msg["scope"]))
    return out


def family_name(family: int) -> int:
    return 4 if family == socket.AF_INET else 6


def default_routes(ipr) -> list[tuple[int, str, int]]:
    """(family 4|6, gateway, oif) of the main table's default routes."""
    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.iproute.get_routes(family=fam, table=254):
            if msg["dst_len"] != 0:
                continue
            gw = msg.get_attr("RTA_GATEWAY")
            if gw:
                out.append((family_name(fam), gw, msg.get_attr("RTA_OIF")))
    return out
