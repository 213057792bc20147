"""VXLAN devices and the static mesh behind them (as flannel's vxlan backend), through pyroute2.

The device learns nothing and floods nothing (`nolearning`, no default FDB entry): for every
remote node the mesh holds exactly three entries on it:
  - a route to the node's subnet via the subnet's network address, onlink;
  - a permanent neighbour entry: that address -> the node's VTEP MAC;
  - an FDB entry: that MAC -> the node's VTEP IP (the underlay address to encapsulate to).
The device carries its own subnet's network address as a /32, so that packets the host
itself sends into the overlay leave with an overlay source.

The device is made with `dev <underlay>`: the kernel then caps its MTU at the underlay's − 50,
and without it would silently fragment or drop what does not fit.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from . import links

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 4
RTPROT_CNM = 0x4F  # our routes on a VXLAN device carry this protocol number (cnmctl gc, doctor)
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class VxlanError(Exception):
    pass


@dataclass(frozen=True)
class Peer:
    """One remote node as the mesh programs it."""

    subnet: str  # e.g. 10.244.2.0/24
    vtep_ip: str
    vtep_mac: str

    @property
    def gateway(self) -> str:
        return str(ipaddress.ip_network(self.subnet).network_address)


def underlay(ipr, interface: str = "", address: str = "") -> tuple[str, int, str, int]:
    """(interface name, ifindex, its IPv4 address, MTU) of the underlay: the named interface,
    the one holding `address`, else the interface of the default route."""
    ip = ipr.iproute
    if address:
        for msg in ip.get_addr(family=2):
            if msg.get_attr("IFA_ADDRESS") == address:
                index = msg["index"]
                break
        else:
            raise VxlanError(f"no interface holds underlayAddress {address}")
    elif interface:
        index = links.link_index(ipr, interface)
        if index is None:
            raise VxlanError(f"underlayInterface {interface!r} does not exist")
    else:
        defaults = [r for r in ip.get_routes(family=2, table=254) if r["dst_len"] == 0 and r.get_attr("RTA_OIF")]
        if not defaults:
            raise VxlanError("no default route: set underlayInterface or underlayAddress")
        index = defaults[0].get_attr("RTA_OIF")
    link = ip.get_links(index)[0]
    if not address:
        found = [m.get_attr("IFA_ADDRESS") for m in ip.get_addr(family=2, index=index)]
        if not found:
            raise VxlanError(f"underlay interface {link.get_attr('IFLA_IFNAME')!r} has no IPv4 address")
        address = found[0]
    return link.get_attr("IFLA_IFNAME"), index, address, link.get_attr("IFLA_MTU")


def ensure_device(ipr, name: str, vni: int, port: int, local: str, underlay_index: int, mac: str, mtu: int,
                  own_address: str, alias: str) -> int:
    """The VXLAN device `name` as asked (replaced when it differs: another VNI, port, underlay
    or MAC), up, with `own_address`/32; its ifindex."""
    ip = ipr.iproute
    found = links.get_link(ipr, name)
    if found is not None and not _matches(found, vni, port, local, underlay_index, mac):
        ip.link("del", index=found["index"])
        found = None
    if found is None:
        try:
            ip.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=local, vxlan_link=underlay_index,
                    vxlan_port=port, vxlan_learning=0, address=mac, mtu=mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise VxlanError(f"could not add VXLAN device {name!r}: {exc.args[-1]}") from None
        found = links.get_link(ipr, name)
        if found is None:
            raise VxlanError(f"VXLAN device {name!r} vanished right after creation")
    index = found["index"]
    if found.get_attr("IFLA_MTU") != mtu:
        ip.link("set", index=index, mtu=mtu)
    if found.get_attr("IFLA_IFALIAS") != alias:
        ip.link("set", index=index, ifalias=alias)
    if not found["flags"] & links.IFF_UP:
        ip.link("set", index=index, state="up")
    try:
        ip.addr("add", index=index, address=own_address, prefixlen=32)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    return index


def _matches(link, vni, port, local, underlay_index, mac) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get_attr("IFLA_INFO_DATA")
    return (data.get_attr("IFLA_VXLAN_ID") == vni and data.get_attr("IFLA_VXLAN_PORT") == port
            and data.get_attr("IFLA_VXLAN_LOCAL") == local and data.get_attr("IFLA_VXLAN_LINK") == underlay_index
            and link.get_attr("IFLA_ADDRESS") == mac)


def add_peer(ipr, index: int, peer: Peer) -> None:
    """The three entries of one remote node (replacing what differs)."""
    ip = ipr.iproute
    ip.fdb("replace", ifindex=index, lladdr=peer.vtep_mac, dst=peer.vtep_ip, state=NUD_PERMANENT, flags=NTF_SELF)
    ip.neigh("replace", ifindex=index, dst=peer.gateway, lladdr=peer.vtep_mac, state=NUD_PERMANENT)
    ip.route("replace", dst=peer.subnet, gateway=peer.gateway, oif=index, flags=RTNH_F_ONLINK, proto=RTPROT_CNM)


def remove_peer(ipr, index: int, peer: Peer) -> None:
    """Remove the three entries of one node (each one that is there)."""
    ip = ipr.iproute
    for call in (lambda: ip.route("del", dst=peer.subnet, oif=index),
                 lambda: ip.neigh("del", ifindex=index, dst=peer.gateway),
                 lambda: ip.fdb("del", ifindex=index, lladdr=peer.vtep_mac, dst=peer.vtep_ip)):
        try:
            call()
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EINVAL):
                raise


def peers(ipr, index: int) -> list[Peer]:
    """The mesh as the kernel has it on device `index`: one Peer per route of ours, with the
    MAC of its neighbour entry and the VTEP of that MAC's FDB entry ("" where missing)."""
    ip = ipr.iproute
    neigh = {m.get_attr("NDA_DST"): m.get_attr("NDA_LLADDR") for m in ip.get_neighbours(ifindex=index)}
    fdb = {}
    for m in ip.fdb("dump", ifindex=index):
        if m["ifindex"] == index and m.get_attr("NDA_DST"):
            fdb[m.get_attr("NDA_LLADDR")] = m.get_attr("NDA_DST")
    found = []
    for r in ip.get_routes(family=2, oif=index):
        if r["proto"] != RTPROT_CNM or r.get_attr("RTA_OIF") != index:
            continue
        subnet = f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
        gw = r.get_attr("RTA_GATEWAY") or ""
        mac = neigh.get(gw, "")
        found.append(Peer(subnet, fdb.get(mac, ""), mac))
    return found


def sync(ipr, index: int, wanted: list[Peer]) -> tuple[int, int]:
    """Make the mesh on device `index` exactly `wanted`: add or fix what differs, remove the
    nodes that are gone. (added or changed, removed)"""
    have = {p.subnet: p for p in peers(ipr, index)}
    want = {p.subnet: p for p in wanted}
    changed = removed = 0
    for subnet, peer in want.items():
        if have.get(subnet) != peer:
            if subnet in have:
                remove_peer(ipr, index, have[subnet])
            add_peer(ipr, index, peer)
            changed += 1
    for subnet, peer in have.items():
        if subnet not in want:
            remove_peer(ipr, index, peer)
            removed += 1
    return changed, removed


def delete_device(ipr, name: str) -> bool:
    index = links.link_index(ipr, name)
    if index is None:
        return False
    try:
        ipr.iproute.link("del", index=index)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
    return True
