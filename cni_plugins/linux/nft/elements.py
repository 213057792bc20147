"""The element vocabulary of our tables: which elements of which sets and maps (layout.py)
an endpoint's masquerade, published ports, isolation, icc=false and MAC check are, and the
JSON commands that add or remove them.

Every element carries its owner's key (the endpoint id) as its comment, so the entries of an
endpoint can be found and removed with nothing but that key.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Iterable

from .layout import TABLE

@dataclass(frozen=True)
class Element:
    """One element of one of our sets or maps; `key` is its nft JSON value, `data` the
    value it maps to (maps only, e.g. a DNAT target for a published port). Identity and
    removal use the key alone."""

    family: str
    set: str
    key: Any
    data: Any = None
    note: str = ""  # appended to the owner in the comment (e.g. the container id of a published port)

    def ident(self) -> str:
        return f"{self.family}/{self.set}/{json.dumps(self.key, sort_keys=True)}"

    def __str__(self) -> str:
        return f"{self.family} {TABLE} @{self.set} {json.dumps(self.key)}"


def _prefix(network: str) -> dict:
    net = ipaddress.ip_network(network, strict=False)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def masquerade(address: str, subnet: str) -> list[Element]:
    """Masquerade `address` towards everything outside `subnet`."""
    ip = ipaddress.ip_address(address)
    n = str(ip.version)
    return [
        Element("inet", f"masq{n}", str(ip)),
        Element("inet", f"masq{n}_local", {"concat": [str(ip), _prefix(subnet)]}),
    ]


def port_elements(proto: str, host_ip: str | None, host_port: int, version: int, address, port,
                  note: str = "") -> list[Element]:
    """The two map elements of a published port: bound to `host_ip`, or to every local
    address of the family when None."""
    n = str(version)
    if host_ip:
        maps, key = f"ports{n}", {"concat": [proto, str(ipaddress.ip_address(host_ip)), host_port]}
    else:
        maps, key = f"ports{n}_any", {"concat": [proto, host_port]}
    return [Element("inet", f"{maps}_addr", key, address, note), Element("inet", f"{maps}_port", key, port, note)]


def published_port(proto: str, host_ip: str | None, host_port: int, address: str, port: int,
                   note: str = "") -> list[Element]:
    """DNAT (proto, host_ip or any local address, host_port) to address:port."""
    ip = ipaddress.ip_address(address)
    return port_elements(proto, host_ip, host_port, ip.version, str(ip), port, note)


def binding_of(element: Element) -> tuple[str, str | None, int]:
    """(l4proto, host address or None for every address, host port) of a published-port element."""
    parts = element.key["concat"]
    return (parts[0], None, parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def hairpin(address: str, subnet: str) -> list[Element]:
    """Masquerade published connections from `subnet` to `address` (so replies return via the host)."""
    ip = ipaddress.ip_address(address)
    return [Element("inet", f"hairpin{ip.version}", {"concat": [str(ip), _prefix(subnet)]})]


def isolate(bridge: str, port: str) -> list[Element]:
    """The endpoint on `port` makes `bridge` isolated: nothing between it and another bridge.
    Its own element (iso_ports) and the bridge's, shared by all its isolated endpoints."""
    return [Element("inet", "iso_ports", {"concat": [bridge, port]}),
            Element("inet", "iso_bridges", {"concat": [bridge, bridge]})]


def no_icc(bridge: str, port: str) -> list[Element]:
    """The bridge does not forward frames between two ports both marked no-icc, nor the host
    route between two of its ports (see layout._no_icc_routed_rules): the port's own elements and
    the bridge's, shared by all its icc=false endpoints."""
    return [Element("bridge", "noicc", port), Element("inet", "noicc_ports", {"concat": [bridge, port]}),
            Element("inet", "noicc_bridges", {"concat": [bridge, bridge]})]


# Sets whose elements several endpoints share (one per bridge) -> the set of their per-endpoint
# elements: a shared element stays while its bridge has one there (drivers/bridge/shared.py).
SHARED_SETS = {"iso_bridges": "iso_ports", "noicc_bridges": "noicc_ports"}


def noicc_published(address: str, subnet: str) -> list[Element]:
    """icc=false and a published port at `address`: a connection to it from anywhere in
    `subnet` (a neighbour through the gateway) is masqueraded, so the answers go back
    through the host instead of from port to port across the bridge (which icc=false drops)."""
    ip = ipaddress.ip_address(address)
    return [Element("inet", f"noicc_dnat{ip.version}", {"concat": [_prefix(subnet), str(ip)]})]


def mac_spoof_check(port: str, mac: str) -> list[Element]:
    """Frames entering the bridge from `port` must come from `mac`."""
    return [
        Element("bridge", "spoofchk_ports", port),
        Element("bridge", "spoofchk_allowed", {"concat": [port, mac.lower()]}),
    ]


def element_command(op: str, element: Element, owner: str) -> dict:
    value: Any = element.key
    if op == "add":
        comment = f"{owner} {element.note}" if element.note else owner
        value = {"elem": {"val": element.key, "comment": comment}}
        if element.data is not None:
            value = [value, element.data]
    elif element.data is not None:
        value = [element.key, element.data]
    return {op: {"element": {"family": element.family, "table": TABLE, "name": element.set, "elem": [value]}}}


def add_commands(elements: Iterable[Element], owner: str) -> list[dict]:
    """The JSON commands that add `elements` for `owner` (for callers that batch several
    owners in one transaction, e.g. the bench filling a host with endpoints)."""
    return [element_command("add", e, owner) for e in elements]


def owner_of(comment: str) -> str:
    """The owner key of an element's comment ("<owner>" or "<owner> <note>")."""
    return comment.split(" ", 1)[0]


def key_text(key) -> str:
    """An element key in nft syntax (concatenations as `a . b`)."""
    if isinstance(key, dict) and "concat" in key:
        return " . ".join(str(part) for part in key["concat"])
    return str(key)


def parse(family: str, data: list[dict]) -> list[tuple[Element, str]]:
    """(element, comment) of every set and map in a listing of our table of `family`."""
    out = []
    for item in data:
        s = item.get("set") or item.get("map")
        if not s:
            continue
        for entry in s.get("elem") or []:
            value = None
            if "map" in item and isinstance(entry, list) and len(entry) == 2:
                entry, value = entry  # a map element: [key, value]
            if isinstance(entry, dict) and "elem" in entry:
                key, comment = entry["elem"]["val"], entry["elem"].get("comment", "")
            else:
                key, comment = entry, ""
            out.append((Element(family, s["name"], key, value), comment))
    return out


Wanted = list[tuple[str, list[Element]]]  # [(owner, the elements it needs)]
