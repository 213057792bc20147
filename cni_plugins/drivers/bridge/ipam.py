"""The bridge's IPAM calls: the delegated calls every driver makes (delegated_ipam.py), and
how the bridge applies a result (gateways, default routes).
"""

from __future__ import annotations

import ipaddress

from ...cni.errors import IPAM_FAILURE, CNIError
from ...cni.result import IPConfig, Result, Route
from ..delegated_ipam import (  # noqa: F401  (the bridge's callers name them through this module)
    ALL_OR_NOTHING, RECORDED_ENV, add, delegate, gc, held_by, record, release_recorded, require_version,
    speaks_status, undoes_failed_add,
)


def first_host(cidr: str) -> str:
    """The reference bridge's computed gateway: the subnet's network address + 1."""
    net = ipaddress.ip_interface(cidr).network
    return str(net.network_address + 1)


def addressing(result: Result, is_gateway: bool, default_gateway: bool) -> tuple[list[IPConfig], list[Route]]:
    """The IPAM result as the bridge applies it: IPs on the container interface (index 2),
    gateways computed when isGateway, a default route per family when isDefaultGateway."""
    if not result.ips:
        raise CNIError(IPAM_FAILURE, "IPAM plugin returned missing IP config")
    ips: list[IPConfig] = []
    routes = list(result.routes)
    has_default = set()
    for ip in result.ips:
        gateway = ip.gateway or (first_host(ip.address) if is_gateway else None)
        ips.append(IPConfig(address=ip.address, gateway=gateway, interface=2))
        if default_gateway and ip.family not in has_default:
            default = "0.0.0.0/0" if ip.family == 4 else "::/0"
            if not any(r.dst == default and r.gw for r in routes):
                routes.append(Route(dst=default, gw=gateway))
            has_default.add(ip.family)
    return ips, routes
