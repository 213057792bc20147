"""CHECK for a macvlan endpoint: prevResult, the record and the kernel must agree (kind,
mode, master, MTU, MAC, addresses, routes). The first mismatch is code 103."""

from __future__ import annotations

import ipaddress

from ...cni.errors import CHECK_FAILED, CNIError
from ...cni.result import IPConfig, Result, Route
from ...cnm.model import Endpoint
from ..kernel_errors import kernel_errors
from .kernel import route_gateway


def fail(msg: str, details: str = "") -> None:
    raise CNIError(CHECK_FAILED, msg, details)


def verify(ctx, conf, endpoint: Endpoint, prev: Result) -> None:
    from ...linux import addr, links, macvlan

    request = ctx.request
    data = endpoint.data
    ips = [IPConfig(**d) for d in data.get("ips", [])]
    routes = [Route(**d) for d in data.get("routes", [])]
    in_container = bool(data.get("in_container"))
    position = next((i for i, itf in enumerate(prev.interfaces)
                     if itf.name == request.ifname and itf.sandbox == request.netns), None)
    if position is None:
        fail(f"prevResult has no interface {request.ifname} in sandbox {request.netns}")
    prev_itf = prev.interfaces[position]

    with kernel_errors("read the kernel state"):
        with links.rtnl() as ipr, links.rtnl(ctx.netns_fd) as cipr:
            master_name = data.get("master") or conf.master
            master = links.get_link(cipr if in_container else ipr, master_name)
            if master is None:
                fail(f"master interface {master_name} not found")
            link = links.get_link(cipr, request.ifname)
            if link is None:
                fail(f"container interface {request.ifname} not found in {request.netns}")
            kind, mode = macvlan.info(link)
            if kind != "macvlan":
                fail(f"container interface {request.ifname} is not a macvlan (kind {kind})")
            if mode != conf.mode:
                fail(f"container macvlan mode {mode} does not match expected value: {conf.mode}")
            if link.get_attr("IFLA_LINK") != master["index"]:
                fail(f"container interface {request.ifname} is not a macvlan of {master_name}")
            # The MTU the ADD set; the kernel lowers a macvlan's with its master's, never raises it.
            master_mtu = master.get_attr("IFLA_MTU")
            want_mtu = conf.mtu or data.get("mtu") or master_mtu
            if link.get_attr("IFLA_MTU") not in (want_mtu, min(want_mtu, master_mtu)):
                fail(f"interface {request.ifname} MTU is {link.get_attr('IFLA_MTU')}, expected {want_mtu}")
            have_mac = (link.get_attr("IFLA_ADDRESS") or "").lower()
            want_mac = (prev_itf.mac or data.get("mac") or "").lower()
            if want_mac and want_mac != have_mac:
                fail(f"interface {request.ifname} Mac {want_mac} doesn't match container Mac: {have_mac}")
            present = set(addr.addresses(cipr, link["index"]))
            ours = [ip for ip in prev.ips if ip.interface in (None, position)]
            for ip in ips + ours:
                if str(ipaddress.ip_interface(ip.address)) not in present:
                    fail(f"address {ip.address} missing on {request.ifname}")
            have_routes = set(addr.routes(cipr, link["index"]))
            for route in routes + list(prev.routes):
                want = (str(ipaddress.ip_network(route.dst, strict=False)), route_gateway(route, ips))
                if want not in have_routes:
                    fail(f"route {want[0]} via {want[1] or 'link'} missing on {request.ifname}")
