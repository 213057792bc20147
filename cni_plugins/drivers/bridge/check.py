"""CHECK for a bridge endpoint: prevResult, the store's record and the kernel must agree.

The first mismatch is reported (code 103). Later plugins of a chain may have
changed the container interface (tuning sets a MAC and updates prevResult) or
added interfaces (bandwidth's ifb): we only look at what this driver made, and
take the container MAC from prevResult when it lists our interface.
"""

from __future__ import annotations

import ipaddress

from ...cni.errors import CHECK_FAILED, CNIError
from ...cni.result import IPConfig, Result, Route
from ...cnm.model import Endpoint
from ...linux import addr, bridge, links, veth
from .endpoint import expected_elements, host_veth_name, recorded_elements, route_gateway
from ..kernel_errors import kernel_errors


def fail(msg: str, details: str = "") -> None:
    raise CNIError(CHECK_FAILED, msg, details)


def verify(ctx, conf, endpoint: Endpoint, prev: Result) -> None:
    request = ctx.request
    data = endpoint.data
    bridge_name = data.get("bridge") or conf.bridge
    host_name = data.get("host_veth") or host_veth_name(endpoint.id)
    ips = [IPConfig(**d) for d in data.get("ips", [])]
    routes = [Route(**d) for d in data.get("routes", [])]

    # prevResult <-> store
    position = next(
        (i for i, itf in enumerate(prev.interfaces) if itf.name == request.ifname and itf.sandbox == request.netns), None
    )
    if position is None:
        fail(f"prevResult has no interface {request.ifname} in sandbox {request.netns}")
    prev_container = prev.interfaces[position]
    prev_addrs = {str(ipaddress.ip_interface(ip.address)) for ip in prev.ips}
    for ip in ips:
        if ip.address not in prev_addrs:
            fail(f"address {ip.address} of endpoint {endpoint.id} is not in prevResult")

    with kernel_errors("read the kernel state"):
        with links.rtnl() as ipr:
            br = links.get_link(ipr, bridge_name)
            if br is None:
                fail(f"bridge {bridge_name} not found")
            if bridge.kind_of(br) != "bridge":
                fail(f"interface {bridge_name} is not a bridge")
            if bridge.is_promisc(br) != conf.promiscMode:
                fail(f"bridge {bridge_name} promiscuous mode is {bridge.is_promisc(br)}, config says {conf.promiscMode}")
            host = links.get_link(ipr, host_name)
            if host is None:
                fail(f"host veth {host_name} not found")
            if host.get_attr("IFLA_MASTER") != br["index"]:
                fail(f"host veth {host_name} is not a port of bridge {bridge_name}")
        with links.rtnl(ctx.netns_fd) as cipr:
            cont = links.get_link(cipr, request.ifname)
            if cont is None:
                fail(f"container interface {request.ifname} not found in {request.netns}")
            if bridge.kind_of(cont) != "veth":
                fail(f"container interface {request.ifname} is not a veth")
            if veth.peer_index(cont) != host["index"]:
                fail(f"container interface {request.ifname} is not the peer of host veth {host_name}")
            want_mac = (prev_container.mac or data.get("mac") or "").lower()
            have_mac = (cont.get_attr("IFLA_ADDRESS") or "").lower()
            if want_mac and want_mac != have_mac:
                fail(f"interface {request.ifname} MAC is {have_mac}, expected {want_mac}")
            present = set(addr.addresses(cipr, cont["index"]))
            ours = [ip for ip in prev.ips if ip.interface in (None, position)] if prev.interfaces else prev.ips
            for ip in ips + ours:
                if ip.address not in present:
                    fail(f"address {ip.address} missing on {request.ifname}")
            have_routes = {(dst, gw) for dst, gw in addr.routes(cipr, cont["index"])}
            for route in routes:
                want = (str(ipaddress.ip_network(route.dst, strict=False)), route_gateway(route, ips))
                if want not in have_routes:
                    fail(f"route {want[0]} via {want[1] or 'link'} missing on {request.ifname}")

    # what ADD recorded, and what this config + runtimeConfig (published ports) asks for
    elements = recorded_elements(endpoint)
    seen = {e.ident() for e in elements}
    for e in expected_elements(conf, request, data, host_name, data.get("mac") or want_mac):
        if e.ident() not in seen:
            elements.append(e)
    if elements:
        from ...linux import nft

        with kernel_errors("read nftables"):
            gone = nft.missing(elements)
            drifted = nft.drifted_chains(e.family for e in elements)
        if gone:
            fail("nftables entry missing", str(gone[0]))
        if drifted:
            fail("nftables rules changed", f"chain {drifted[0]} of table cnm does not hold our rules; "
                 "`cnmctl gc` restores them")
