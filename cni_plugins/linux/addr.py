"""Addresses and routes on one link (pyroute2)."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import time

from pyroute2.netlink.exceptions import NetlinkError

from .links import ifreq

IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_TABLE_MAIN = 254
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


class AddrError(Exception):
    pass


def _reason(exc: NetlinkError) -> str:
    return exc.args[1] if len(exc.args) > 1 else str(exc)


def add_address(ipr, index: int, cidr: str, nodad: bool = False) -> bool:
    """Add `cidr` (an interface address like 10.0.0.5/24); EEXIST is fine. True when it was
    added, False when the link had it already."""
    iface = ipaddress.ip_interface(cidr)
    broadcast = flags = None
    if iface.version == 4:
        if iface.network.prefixlen < 31:
            broadcast = str(iface.network.broadcast_address)
    elif nodad:
        flags = IFA_F_NODAD
    try:
        ipr.add_address(index, str(iface.ip), iface.network.prefixlen, broadcast=broadcast, flags=flags)
        return True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise AddrError(f"could not add address {cidr}: {_reason(exc)}") from None
        return False


def settle_ipv6(ipr, index: int, timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """Wait (at most `timeout` s) until duplicate address detection is done for every IPv6
    address of link `index` (the link up). (failed, still tentative): the addresses another
    node on the link has, and those whose DAD did not finish in time."""
    deadline = time.monotonic() + timeout
    while True:
        failed, tentative = [], []
        for msg in ipr.iproute.get_addr(index=index, family=socket.AF_INET6):
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            cidr = f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"
            if flags & IFA_F_DADFAILED:
                failed.append(cidr)
            elif flags & IFA_F_TENTATIVE:
                tentative.append(cidr)
        if failed or not tentative or time.monotonic() >= deadline:
            return failed, tentative
        time.sleep(0.05)


def primary_ipv4(ifname: str) -> str | None:
    """The primary IPv4 address of link `ifname` in this thread's netns, as a CIDR; None when it
    has none or it cannot be told. Two ioctls, where asking rtnetlink to add an address the link
    has (EEXIST) is a request of pyroute2's to encode and an error to raise: ~0.15 ms an ADD."""

    request = ifreq(ifname)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            address = fcntl.ioctl(sock, SIOCGIFADDR, request)[20:24]
            netmask = fcntl.ioctl(sock, SIOCGIFNETMASK, request)[20:24]
    except OSError:  # EADDRNOTAVAIL: no IPv4 address; ENODEV: no such link
        return None
    return f"{socket.inet_ntoa(address)}/{int.from_bytes(netmask, 'big').bit_count()}"


def del_address(ipr, index: int, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    try:
        ipr.iproute.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
            raise AddrError(f"could not remove address {cidr}: {_reason(exc)}") from None


def addresses(ipr, index: int, family: int | None = None) -> list[str]:
    """Global-scope-or-not addresses of a link as CIDR strings (link-local IPv6 excluded)."""
    out = []
    kwargs = {"index": index}
    if family is not None:
        kwargs["family"] = socket.AF_INET if family == 4 else socket.AF_INET6
    for msg in ipr.iproute.get_addr(**kwargs):
        ip = msg.get_attr("IFA_ADDRESS")
        if msg["family"] == socket.AF_INET6 and ipaddress.ip_address(ip).is_link_local:
            continue
        out.append(f"{ip}/{msg['prefixlen']}")
    return out


def add_route(ipr, index: int, dst: str, gateway: str | None = None, priority: int | None = None) -> None:
    """Add a main-table route through link `index`, as the reference plugins do: without
    NLM_F_EXCL, so a route to the same destination through another gateway or link (a
    container's second network's default route) is installed beside it, not refused; EEXIST
    then means this very route is there already, which is fine."""
    net = ipaddress.ip_network(dst, strict=False)
    try:
        ipr.add_route(str(net.network_address), net.prefixlen, index, gateway=gateway, priority=priority, prepend=True)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            via = f" via {gateway}" if gateway else ""
            raise AddrError(f"could not add route {dst}{via}: {_reason(exc)}") from None


def routes(ipr, index: int) -> list[tuple[str, str | None]]:
    """(dst CIDR, gateway) of the main-table routes through link `index`, including its
    nexthops of multipath routes (IPv6 routes of two links with the same key are one)."""
    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.iproute.get_routes(family=fam, table=RT_TABLE_MAIN):
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if fam == socket.AF_INET else "::")
            cidr = str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
            hops = msg.get_attr("RTA_MULTIPATH")
            if hops:
                out.extend((cidr, _hop_gateway(hop)) for hop in hops if hop["oif"] == index)
            elif msg.get_attr("RTA_OIF") == index:
                out.append((cidr, msg.get_attr("RTA_GATEWAY")))
    return out


def _hop_gateway(hop) -> str | None:
    for name, value in hop.get("attrs", ()):
        if name == "RTA_GATEWAY":
            return value
    return None
