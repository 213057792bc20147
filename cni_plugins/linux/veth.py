"""veth pairs whose peer is created directly in another netns (no move under RTNL)."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError


class VethError(Exception):
    pass


def create_pair(ipr, host_name: str, peer_name: str, peer_netns_fd: int, mtu: int = 0, peer_mac: str = "") -> int:
    """Create `host_name` in ipr's netns and its peer `peer_name` in `peer_netns_fd`; return the host index."""
    peer: dict = {"ifname": peer_name, "net_ns_fd": peer_netns_fd}
    kwargs: dict = {"ifname": host_name, "kind": "veth", "peer": peer}
    if mtu:
        kwargs["mtu"] = mtu
        peer["mtu"] = mtu
    if peer_mac:
        peer["address"] = peer_mac
    try:
        ipr.link("add", **kwargs)
    except NetlinkError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        if exc.code == errno.EEXIST:
            raise VethError(f"could not create veth {host_name}/{peer_name}: a link with one of these names exists") from None
        raise VethError(f"could not create veth {host_name}/{peer_name}: {reason}") from None
    found = ipr.link_lookup(ifname=host_name)
    if not found:
        raise VethError(f"veth {host_name} vanished right after creation")
    return found[0]


def peer_index(link) -> int | None:
    """The ifindex of a veth's peer (in the peer's own netns)."""
    return link.get_attr("IFLA_LINK")


def delete(ipr, name: str) -> bool:
    """Delete link `name` (both ends of a veth go); False when it was already gone.

    One RTM_DELLINK by name: no lookup first, a missing link answers ENODEV."""
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True
