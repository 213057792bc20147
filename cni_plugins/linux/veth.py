"""veth pairs whose peer is created directly in another netns (no move under RTNL)."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError


class VethError(Exception):
    pass


class VethExists(VethError):
    """A link with the host or the peer name already exists (EEXIST)."""


class BridgeFull(VethError):
    """The bridge to enslave the host end to has no free port number (EXFULL)."""


BRIDGE_MAX_PORTS = 1023  # the kernel's BR_MAX_PORTS (1024) less port number 0, which is never used


def create_pair(
    ipr,
    host_name: str,
    peer_name: str,
    peer_netns_fd: int,
    mtu: int = 0,
    peer_mac: str = "",
    master: int = 0,
    up: bool = False,
) -> None:
    """Create `host_name` in ipr's netns and its peer `peer_name` in `peer_netns_fd` (down),
    in one RTM_NEWLINK. With `master` the host end is a port of that bridge from the start,
    with `up` it is up: the kernel applies both before the request returns, and a failure
    to enslave fails the request and leaves no link behind. (The new ends' indexes and
    MACs: links.ioctl_index, links.ioctl_mac.)"""
    try:
        ipr.add_veth(host_name, peer_name, peer_netns_fd=peer_netns_fd, mtu=mtu, peer_address=peer_mac or None,
                     master=master, up=up)
    except NetlinkError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        if exc.code == errno.EEXIST:
            raise VethExists(f"could not create veth {host_name}/{peer_name}: a link with one of these names exists") from None
        if exc.code == errno.EXFULL and master:
            raise BridgeFull(f"could not create veth {host_name}/{peer_name}: {reason}") from None
        raise VethError(f"could not create veth {host_name}/{peer_name}: {reason}") from None


def peer_index(link) -> int | None:
    """The ifindex of a veth's peer (in the peer's own netns)."""
    return link.get_attr("IFLA_LINK")


def delete(ipr, name: str) -> bool:
    """Delete link `name` (both ends of a veth go); False when it was already gone.

    One RTM_DELLINK by name: no lookup first, a missing link answers ENODEV."""
    try:
        ipr.del_link(ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True


def alias(ipr, name: str) -> str | None:
    """The alias of link `name` (None: no alias, or no such link)."""
    try:
        link = ipr.get_link(ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return link.get_attr("IFLA_IFALIAS") or None
