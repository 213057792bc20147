"""macvlan links: create one on a master (in a sandbox's netns), rename and tag it, read one
back, delete one that carries our owner tag."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

# include/uapi/linux/if_link.h: enum macvlan_mode
MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
MODE_NAMES = {v: k for k, v in MODES.items()}


class MacvlanError(Exception):
    pass


class NameTaken(MacvlanError):
    """The name is taken where the link was to be created or renamed (EEXIST)."""


def create(ipr, name: str, master_index: int, mode: str, netns_fd: int | None = None, mtu: int = 0, mac: str = "",
           bc_queue_len: int = 0) -> None:
    """Create macvlan `name` (down) on link `master_index` of ipr's netns, in `netns_fd`
    (default: ipr's)."""
    try:
        ipr.add_macvlan(name, master_index, MODES[mode], netns_fd=netns_fd, mtu=mtu, address=mac or None,
                        bc_queue_len=bc_queue_len)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise NameTaken(f"a link named {name} exists") from None
        raise


def rename(ipr, index: int, ifname: str, owner: str, arp_notify: bool = False) -> None:
    """Link `index` renamed `ifname` and tagged `owner` (its alias), with arp_notify on (a
    gratuitous ARP when it comes up), in one request."""
    try:
        ipr.move_link(index, None, ifname, alias=owner, ipv4_conf={"arp_notify": 1} if arp_notify else None)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise NameTaken(f"{ifname} exists") from None
        raise


def info(link) -> tuple[str | None, str | None]:
    """(kind, macvlan mode name or None) of a link message."""
    linkinfo = link.get_attr("IFLA_LINKINFO")
    if linkinfo is None:
        return None, None
    kind = linkinfo.get_attr("IFLA_INFO_KIND")
    mode = None
    if kind in ("macvlan", "macvtap"):
        data = linkinfo.get_attr("IFLA_INFO_DATA")
        raw = data.get_attr("IFLA_MACVLAN_MODE") if data is not None else None
        mode = raw if isinstance(raw, str) else MODE_NAMES.get(raw)
    return kind, mode


def delete_if_ours(ipr, name: str, owner: str, untagged_too: bool) -> bool:
    """Delete link `name` when its alias is `owner` (or it has none and `untagged_too`: a
    link of ours made by an ADD that died before tagging it); True when deleted."""
    try:
        link = ipr.get_link(ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    alias = link.get_attr("IFLA_IFALIAS") or ""
    if alias != owner and (alias or not untagged_too):
        return False
    if info(link)[0] != "macvlan":
        return False
    try:
        ipr.del_link(index=link["index"])
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise
    return True
