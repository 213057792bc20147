"""The macvlan driver's kernel steps, as CNI errors that say what went wrong: the master
(found, usable), creating the link, and removing the links an endpoint may have left."""

from __future__ import annotations

import errno

from ...cni.errors import CONFLICT, INVALID_CONFIG, PLUGIN_FAILURE, CNIError

ARPHRD_ETHER = 1
LINK_PREFIX = "cmv"  # + 12 hex digits of the endpoint id: the link's name until it is tagged


def link_name(endpoint_id: str) -> str:
    return LINK_PREFIX + endpoint_id[:12]


def default_master(ipr) -> str:
    """The interface of the first default route (as the reference plugin); code 7 if none."""
    from ...linux import links

    for _, _, oif in links.default_routes(ipr) + _device_default_routes(ipr):
        link = ipr.get_link(index=oif) if oif else None
        if link is not None:
            return link.get_attr("IFLA_IFNAME")
    raise CNIError(INVALID_CONFIG, "invalid master", "no master given and no default route found to take its "
                                                     "interface: set `master`")


def _device_default_routes(ipr) -> list:
    """Default routes without a gateway (a point-to-point uplink): (family, None, oif)."""
    import socket

    out = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.iproute.get_routes(family=fam, table=254):
            if msg["dst_len"] == 0 and not msg.get_attr("RTA_GATEWAY") and msg.get_attr("RTA_OIF"):
                out.append((4, None, msg.get_attr("RTA_OIF")))
    return out


def usable_master(ipr, name: str, where: str, mtu: int):
    """The master's link message, refused (code 7 naming the key) when it cannot carry
    macvlans: missing here, a bridge or bond port, a passthru macvlan, or with a smaller MTU."""
    from ...linux import links, macvlan

    master = links.get_link(ipr, name)
    if master is None:
        raise CNIError(INVALID_CONFIG, "invalid master", f"master interface {name!r} not found in {where} "
                       f"(it must be a link of that network namespace; linkInContainer chooses which)")
    if master["ifi_type"] != ARPHRD_ETHER:
        raise CNIError(INVALID_CONFIG, "invalid master", f"master {name!r} is not an Ethernet link: a macvlan "
                                                         f"needs one (its own MAC on the master's layer 2)")
    holder = master.get_attr("IFLA_MASTER")
    if holder:
        held_by = ipr.get_link(index=holder)
        raise CNIError(INVALID_CONFIG, "invalid master",
                       f"master {name!r} is a port of {held_by.get_attr('IFLA_IFNAME')!r}: a macvlan needs a master "
                       f"no bridge or bond holds (use the bridge itself, or cnm-bridge)")
    kind, mode = macvlan.info(master)
    if kind in ("macvlan", "macvtap") and mode == "passthru":
        raise CNIError(INVALID_CONFIG, "invalid master",
                       f"master {name!r} is a passthru macvlan: it owns its parent alone, nothing can stack on it")
    have = master.get_attr("IFLA_MTU") or 0
    if mtu > have:
        raise CNIError(INVALID_CONFIG, "invalid mtu", f"invalid MTU {mtu}, must be [0, master MTU({have})]")
    return master


def create_error(exc, master: str, mode: str) -> CNIError:
    """What the kernel's refusal to create the macvlan means."""
    code = getattr(exc, "code", None)
    reason = exc.args[1] if len(getattr(exc, "args", ())) > 1 else str(exc)
    if code == errno.EOPNOTSUPP:
        return CNIError(PLUGIN_FAILURE, "this kernel has no macvlan support",
                        f"creating a macvlan failed: {reason} (the kernel needs CONFIG_MACVLAN)")
    if code == errno.EINVAL and mode == "passthru":
        return CNIError(CONFLICT, f"master {master!r} already has a macvlan",
                        "passthru mode gives one macvlan the whole master: a master with any other macvlan "
                        "(any mode, any network) cannot take a passthru one")
    if code == errno.EINVAL:
        return CNIError(CONFLICT, f"master {master!r} cannot take another macvlan",
                        f"{reason}: the master has a passthru macvlan already (passthru allows one endpoint "
                        f"per master), or this kernel lacks macvlan mode {mode!r}")
    if code == errno.EBUSY:
        return CNIError(CONFLICT, f"master {master!r} is in use", f"{reason}: it is a port of a bridge or bond, "
                        f"or another kind of virtual link (ipvlan) uses it")
    return CNIError(PLUGIN_FAILURE, "failed to create the macvlan", reason)


def remove_links(endpoint_id: str, owner: str, ifname: str, netns_fd: int | None, untagged_too: bool) -> None:
    """Every link an endpoint may have left in its container: the macvlan named from its id
    (an ADD that died before naming it) and the interface that carries its owner tag. The
    netns gone: the kernel removed what was in it."""
    from ...linux import links, macvlan

    if netns_fd is None:
        return
    with links.rtnl(netns_fd) as cipr:
        macvlan.delete_if_ours(cipr, link_name(endpoint_id), owner, untagged_too)
        if ifname:
            macvlan.delete_if_ours(cipr, ifname, owner, False)


def route_gateway(route, ips) -> str | None:
    """As the reference plugins: a route without gw goes via the gateway of its family's IP."""
    if route.gw:
        return route.gw
    return next((ip.gateway for ip in ips if ip.family == route.family and ip.gateway), None)
