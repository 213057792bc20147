"""Linux bridges and their ports (pyroute2)."""

from __future__ import annotations

import errno
import os
import subprocess

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from . import links, sysctl
from .rtnl import socket_netns

IFF_PROMISC = 0x100
BRIDGE_VLAN_FLAGS_ACCESS = ["pvid", "untagged"]


class BridgeError(Exception):
    """A bridge operation failed; str() says what and why."""


def kind_of(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def ensure_bridge(ipr, name: str, mtu: int = 0, promisc: bool = False, vlan_filtering: bool = False):
    """Create bridge `name` unless it exists (EEXIST from a racing ADD is fine); return its link.

    The bridge MAC is pinned to its current value: otherwise the kernel gives the bridge
    the lowest MAC of its ports, and it changes as containers come and go.

    The first time a process meets the bridge this is one RTM_GETLINK: every setting is
    compared with that message and set only when it differs. After that (the resident
    helper, every ADD), while `name` is still the device it verified (same ifindex and MAC),
    up, promiscuous if asked and pinned, three ioctls replace the netlink request (`_seen`).
    """
    if not vlan_filtering:  # (which only RTM_GETLINK shows)
        known = _seen_again(ipr, name, promisc)
        if known is not None:
            sysctl.try_ensure(f"net/ipv6/conf/{name}/accept_ra", "0")
            return known
    link = links.get_link(ipr, name)
    if link is None:
        kwargs = {"ifname": name, "kind": "bridge"}
        if mtu:
            kwargs["mtu"] = mtu
        if vlan_filtering:  # in the same message: a kernel without VLAN filtering creates nothing
            kwargs["br_vlan_filtering"] = 1
        try:
            ipr.iproute.link("add", **kwargs)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise BridgeError(f"could not add bridge {name!r}: {_reason(exc)}") from None
        link = links.get_link(ipr, name)
        if link is None:
            raise BridgeError(f"bridge {name!r} vanished right after creation")
    if kind_of(link) != "bridge":
        raise BridgeError(f"{name!r} already exists but is not a bridge")
    index = link["index"]
    mac = link.get_attr("IFLA_ADDRESS")
    changed = False
    try:
        if vlan_filtering and not vlan_filtering_on(link):
            ipr.iproute.link("set", index=index, kind="bridge", br_vlan_filtering=1)
            changed = True
        if promisc and not link["flags"] & IFF_PROMISC:
            ipr.iproute.link("set", index=index, flags=IFF_PROMISC, mask=IFF_PROMISC)
            changed = True
        pin = _pin_key(ipr, index, mac)
        if pin is None or pin not in _pinned:
            ipr.set_link(index, address=mac)  # pin: addr_assign_type=set
            if pin is not None:
                if len(_pinned) >= _PINNED_MAX:
                    _pinned.clear()
                _pinned.add(pin)
        # we own this bridge's routes: no router advertisements
        sysctl.try_ensure(f"net/ipv6/conf/{name}/accept_ra", "0")
        if not link["flags"] & links.IFF_UP:
            ipr.set_link(index, up=True)
            changed = True
    except NetlinkError as exc:
        raise BridgeError(f"could not configure bridge {name!r}: {_reason(exc)}") from None
    if changed:
        link = links.get_link(ipr, name)
        if link is None:
            raise BridgeError(f"bridge {name!r} vanished while being configured")
    if pin is not None:
        _remember(pin[0], name, index, link.get_attr("IFLA_ADDRESS"))
    return link


# ---- the steady state without netlink ------------------------------------------------------
# Bridges this process verified with RTM_GETLINK: (netns inode, name) -> (ifindex, MAC). A
# device keeps its ifindex for life and a new one gets a new ifindex (and a random MAC), so
# while `name` still has both, it is the bridge that was verified; its flags are read live.
_seen: dict[tuple[int, str], tuple[int, str]] = {}


def _remember(netns_ino: int, name: str, index: int, mac: str | None) -> None:
    if mac:
        if len(_seen) >= _PINNED_MAX:
            _seen.clear()
        _seen[(netns_ino, name)] = (index, mac)


def _seen_again(ipr, name: str, promisc: bool):
    """The bridge as a link message (index, flags, MAC) when this process verified it before and
    nothing needs setting; None otherwise (then the caller asks the kernel)."""
    if not _seen:  # (a one-shot plugin process: nothing verified yet)
        return None
    ino = _netns_ino(ipr)
    known = _seen.get((ino, name)) if ino is not None else None
    if known is None:
        return None
    try:
        index, flags, mac = links.ioctl_index(ipr, name), links.ioctl_flags(ipr, name), links.ioctl_mac(ipr, name)
    except OSError:
        return None
    if (index, mac) != known or not flags & links.IFF_UP or (promisc and not flags & IFF_PROMISC):
        return None
    if (ino, index, mac) not in _pinned:
        return None

    link = ifinfmsg()
    link["index"] = index
    link["flags"] = flags
    link["attrs"] = [("IFLA_IFNAME", name), ("IFLA_ADDRESS", mac)]
    return link


# Bridges whose MAC this process has pinned: (netns inode, ifindex, MAC). Pinning again is
# not a no-op: setting a link's address, even to the same value, raises NETDEV_CHANGEADDR,
# which flushes the bridge's ARP and NDP neighbour tables. A pinned bridge stays pinned
# (nothing sets addr_assign_type back), and another bridge at the same ifindex of a netns
# with the same inode (made after ours was deleted) has another MAC unless one was given
# when it was made, which pins it too; so a key seen here is a bridge that needs no pin.
# rtnetlink shows no addr_assign_type, hence this memory (the resident helper keeps it
# between requests; one process per request pins every time, as before).
_pinned: set[tuple[int, int, str]] = set()
_PINNED_MAX = 4096  # past this (many short-lived netns), forget: the next ADDs pin again


def _pin_key(ipr, index: int, mac: str | None) -> tuple[int, int, str] | None:
    ino = _netns_ino(ipr) if mac else None
    return (ino, index, mac) if ino is not None else None


def _netns_ino(ipr) -> int | None:
    """The inode of the netns ipr's socket lives in; None when it cannot be told."""
    try:
        fd = socket_netns(ipr.fileno())
    except (OSError, AttributeError):
        return None
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def vlan_filtering_on(link) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return bool(data.get_attr("IFLA_BR_VLAN_FILTERING")) if data is not None else False


def is_promisc(link) -> bool:
    return bool(link["flags"] & IFF_PROMISC)


def set_port_flags(ipr, port_index: int, bridge_index: int, hairpin: bool = False, isolated: bool = False) -> None:
    """The port flags the config asks for, on a port of the bridge (one made with IFLA_MASTER);
    no request when none is asked for."""
    if not (hairpin or isolated):
        return
    flags = {}
    if hairpin:
        flags["mode"] = 1  # IFLA_BRPORT_MODE: hairpin
    if isolated:
        flags["isolated"] = 1
    try:
        ipr.iproute.brport("set", index=port_index, **flags)
    except NetlinkError as exc:
        raise BridgeError(f"could not attach port {port_index} to bridge {bridge_index}: {_reason(exc)}") from None


def set_port_vlans(ipr, port_index: int, access: int = 0, trunk: tuple[int, ...] = (), keep_default: bool = False) -> None:
    """Access VLAN (pvid, untagged) and/or tagged trunk VLANs on a port of a vlan_filtering bridge."""
    try:
        if not keep_default:
            try:
                ipr.iproute.vlan_filter("del", index=port_index, vlan_info={"vid": 1})
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL):
                    raise
        if access:
            ipr.iproute.vlan_filter("add", index=port_index, vlan_info={"vid": access, "flags": BRIDGE_VLAN_FLAGS_ACCESS})
        for vid in trunk:
            ipr.iproute.vlan_filter("add", index=port_index, vlan_info={"vid": vid})
    except NetlinkError as exc:
        raise BridgeError(f"could not set VLANs on port {port_index}: {_reason(exc)}") from None


def set_self_vlan(name: str, vid: int) -> None:
    """Put the bridge's own interface (where the gateway address lives) into access VLAN `vid`,
    so a gateway on a vlan_filtering bridge talks to the ports of that VLAN."""
    proc = subprocess.run(
        ["bridge", "vlan", "add", "dev", name, "vid", str(vid), "pvid", "untagged", "self"],
        capture_output=True, text=True, timeout=30,
    )
    if proc.returncode != 0:
        raise BridgeError(f"could not put bridge {name!r} into VLAN {vid}: {proc.stderr.strip()[:300]}")


def _reason(exc: NetlinkError) -> str:
    return exc.args[1] if len(exc.args) > 1 else str(exc)
