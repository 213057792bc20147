"""A bridge endpoint's parts, computed from the config, the request and the endpoint's
record: the host veth's name, the gateway of each route, the nftables elements. ADD
(driver.py) makes them, CHECK (check.py) compares the kernel with them.
"""

from __future__ import annotations

import ipaddress

from ...cni.request import Request
from ...cni.result import IPConfig, Route
from ...cnm.model import Endpoint
from . import ports

HOST_VETH_PREFIX = "cnm"


def host_veth_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth: derived from the endpoint id, 15 bytes."""
    return HOST_VETH_PREFIX + endpoint_id[:12]


def route_gateway(route: Route, ips: list[IPConfig]) -> str | None:
    """As the reference plugins: a route without gw goes via the gateway of its family's IP."""
    if route.gw:
        return route.gw
    for ip in ips:
        if ip.family == route.family and ip.gateway:
            return ip.gateway
    return None


def addresses(ips: list) -> list[tuple[str, str]]:
    """(address, subnet) of the endpoint's recorded IPs."""
    out = []
    for ip in ips:
        cidr = ip["address"] if isinstance(ip, dict) else ip.address
        out.append((str(ipaddress.ip_interface(cidr).ip), cidr))
    return out


# endpoint.data[MASQUERADE_EXCEPT]: the prefix ipMasq leaves alone when it is wider than the
# endpoint's own subnet (an overlay's cluster-wide subnet: pod to pod keeps its source).
MASQUERADE_EXCEPT = "masqueradeExcept"


def expected_elements(conf, request: Request, data: dict, host_name: str, mac: str) -> list:
    """The nft elements an endpoint needs: masquerade, MAC check, published ports and
    their hairpin masquerade, isolation. Computed from the config + request + record, so
    CHECK can compare them with the kernel too."""
    mappings = ports.requested(request, conf.hostBindingIP)
    addrs = addresses(data.get("ips", []))
    elements = []
    if conf.ipMasq:
        for ip, subnet in addrs:
            elements.extend(_nft().masquerade(ip, data.get(MASQUERADE_EXCEPT) or subnet))
    if conf.macspoofchk and mac:
        elements.extend(_nft().mac_spoof_check(host_name, mac))
    if mappings:
        elements.extend(ports.elements(mappings, addrs, note=container_note(request.container_id)))
    if conf.isolateNetworks:
        elements.extend(_nft().isolate(conf.bridge, host_name))
    if not conf.icc:
        elements.extend(_nft().no_icc(conf.bridge, host_name))
        published = ports.families(mappings, addrs) if mappings else set()
        for ip, subnet in addrs:
            if ipaddress.ip_address(ip).version in published:
                elements.extend(_nft().noicc_published(ip, subnet))
    return elements


def container_note(container_id: str) -> str:
    """What a published port's element comment carries after its owner: the container id (to
    name it in a conflict, and to know it again from another store), cut to fit a comment."""
    return container_id[:96]


def _nft():
    """linux/nft, loaded by the first element that needs it: a plain endpoint (no NAT, ports,
    isolation or MAC check) never loads it (~3 ms of an in-process ADD or DEL)."""
    from ...linux import nft

    return nft


def recorded_elements(endpoint: Endpoint) -> list:
    return [_nft().Element(*entry) for entry in endpoint.data.get("nft") or ()]
