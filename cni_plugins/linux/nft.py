"""Our nftables tables, programmed through nft's JSON interface (`nft -j -f -`).

Layout (DESIGN.md §3: kernel objects we own carry our identity):

    table inet cnm      NAT and filtering for addresses: ipMasq (masqN), published
                        ports (DNAT through the portsN_* maps), masquerade of
                        hairpin and 127.0.0.0/8-sourced published traffic
                        (hairpinN), isolation between networks (isoN), no way
                        from a bridge to the host's 127.0.0.0/8 (input). Rules are
                        static; what varies per endpoint lives in sets/maps, so an
                        ADD or DEL changes a few elements and its cost does not
                        grow with the number of endpoints.
    table bridge cnm    L2 checks on bridge ports: MAC spoof check, icc=false
                        (no forwarding between two ports of set noicc, but for
                        published ports reached through the host).

Published ports: nft 1.0.6 cannot declare through JSON a map whose value is a
concatenation (address . port), so the DNAT target is looked up in two maps with
the same key: `dnat ip to KEY map @ports4_addr : KEY map @ports4_port`. A port
bound to one host address is keyed l4proto . address . port (portsN_addr/_port),
a port bound to every local address l4proto . port (portsN_any_addr/_any_port);
plain hash maps, so a keyed lookup tells whether a key is taken (can_create). DNAT
applies to local destinations only (`fib daddr type local`), in prerouting (from outside
and from containers) and output (from the host).

Every element carries its owner's key (the endpoint id) as its comment, so the
entries of an endpoint can be found and removed with nothing but that key.

Each `commit()` is ONE nft transaction that adds and removes elements, checking the
layout's marker (an empty set named layout_<digest>) in the same transaction; only when that fails does it
(re)declare the layout — `add` of a table/set/chain is idempotent and base chains are
flushed and refilled with the same static rules — with the same elements. Removal is
"add, then delete" inside the same transaction, which succeeds whether or not the element
existed (nft 1.0.6 has no `destroy`), so DEL stays idempotent.

Self-healing: a flushed ruleset (a firewall reload) or a deleted table takes every
endpoint's elements with it. Whoever declares the layout again also puts back the elements
its caller says live endpoints need (commit()'s `restore`, restore()); audit() tells what is
missing. The caller knows them (the store's records); this module only compares and adds,
and never removes or replaces an element it did not own.
"""

from __future__ import annotations

import ipaddress
import functools
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

NFT = "nft"
TABLE = "cnm"
TIMEOUT_S = 60
BACKEND_ENV = "CNM_NFT"


class NftError(Exception):
    """nft failed; str() carries its message."""


# ---- the layout ----------------------------------------------------------------------------
def _payload(proto: str, field: str) -> dict:
    return {"payload": {"protocol": proto, "field": field}}


def _masquerade_rule(proto: str, multicast: str) -> list[dict]:
    """Masquerade sources in @masqN going anywhere but their own subnet (and not multicast)."""
    n = "4" if proto == "ip" else "6"
    net = ipaddress.ip_network(multicast)
    return [
        {"match": {"op": "==", "left": _payload(proto, "saddr"), "right": f"@masq{n}"}},
        {"match": {"op": "!=", "left": {"concat": [_payload(proto, "saddr"), _payload(proto, "daddr")]},
                   "right": f"@masq{n}_local"}},
        {"match": {"op": "!=", "left": _payload(proto, "daddr"),
                   "right": {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}}},
        {"masquerade": None},
    ]


def _spoof_rule() -> list[dict]:
    """On a checked port, drop frames whose source MAC is not the one recorded for it."""
    iif = {"meta": {"key": "iifname"}}
    return [
        {"match": {"op": "==", "left": iif, "right": "@spoofchk_ports"}},
        {"match": {"op": "!=", "left": {"concat": [iif, _payload("ether", "saddr")]}, "right": "@spoofchk_allowed"}},
        {"drop": None},
    ]


_L4 = ["tcp", "udp", "sctp"]


def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _nfproto(proto: str) -> dict:
    return _match(_meta("nfproto"), "ipv4" if proto == "ip" else "ipv6")


LOOPBACK4 = {"prefix": {"addr": "127.0.0.0", "len": 8}}


def _dnat_rules(proto: str, arriving: bool = False) -> list[list[dict]]:
    """Local destination + published (l4proto, address, port) -> the endpoint's address and
    port; a binding to one host address first, then bindings to every address.

    `arriving` (prerouting: packets that came in on an interface): never to 127.0.0.0/8.
    Only the host itself may use 127.0.0.1:hostPort (its packets take the output hook); a
    container routing 127/8 to its gateway, or a neighbour on the host's link, must not reach
    a port published there. (IPv6: the kernel drops ::1 arriving on any other device.)"""
    n = "4" if proto == "ip" else "6"
    specific = {"concat": [_meta("l4proto"), _payload(proto, "daddr"), _payload("th", "dport")]}
    anywhere = {"concat": [_meta("l4proto"), _payload("th", "dport")]}
    not_loopback = [_match(_payload("ip", "daddr"), LOOPBACK4, "!=")] if arriving and proto == "ip" else []
    rules = []
    for key, maps in ((specific, f"ports{n}"), (anywhere, f"ports{n}_any")):
        rules.append([
            _nfproto(proto),
            *not_loopback,
            _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
            _match(_meta("l4proto"), {"set": _L4}),
            {"dnat": {"family": proto, "addr": {"map": {"key": key, "data": f"@{maps}_addr"}},
                      "port": {"map": {"key": key, "data": f"@{maps}_port"}}}},
        ])
    return rules


def _hairpin_rule(proto: str, sets: str = "hairpin") -> list[dict]:
    """A published connection from inside the endpoint's subnet (its own container or a
    neighbour on the bridge) is masqueraded, so the reply comes back through the host.
    (`sets` "noicc_dnat": the same for icc=false endpoints, see noicc_published.)"""
    n = "4" if proto == "ip" else "6"
    return [
        _nfproto(proto),
        _match({"ct": {"key": "status"}}, "dnat", "in"),
        _match({"concat": [_payload(proto, "saddr"), _payload(proto, "daddr")]}, f"@{sets}{n}"),
        {"masquerade": None},
    ]


def _localhost_rule() -> list[dict]:
    """127.0.0.1:port from the host (route_localnet on the bridge lets it leave lo): the
    container cannot answer 127.0.0.1, so the source becomes the bridge address."""
    return [
        _nfproto("ip"),
        _match({"ct": {"key": "status"}}, "dnat", "in"),
        _match(_payload("ip", "saddr"), LOOPBACK4),
        {"masquerade": None},
    ]


def _loopback_guard_rules() -> list[list[dict]]:
    """Nothing arriving from a bridge reaches the host's 127.0.0.0/8 unless DNATed (as
    kubelet's rule against CVE-2020-8558). route_localnet, which the bridge needs while a port
    is published on 127.0.0.1 (see drivers/bridge/localnet.py), would otherwise let a
    container that routes 127/8 to its gateway talk to the host's loopback-only services.
    Any bridge, not only ours (the rule cannot know which are): from a bridge, such a packet
    is an attack or a mistake. A packet without a conntrack entry (invalid: e.g. an ICMP
    error quoting a flow that does not exist; or untracked) has no status to test, so it is
    dropped by its state. IPv6 needs no rule: the kernel drops ::1 arriving on any device
    but lo, whatever its settings."""
    head = [_nfproto("ip"), _match(_meta("iifkind"), "bridge"), _match(_payload("ip", "daddr"), LOOPBACK4)]
    return [
        head + [_match({"ct": {"key": "state"}}, {"set": ["invalid", "untracked"]}), {"drop": None}],
        head + [_match({"ct": {"key": "status"}}, "dnat", "!"), {"drop": None}],
    ]


def _loopback_source_rules() -> list[list[dict]]:
    """No packet from a bridge with a loopback source. route_localnet also turns off the
    kernel's martian check of the source on the bridge: a container could send as 127.0.0.x
    to the host's services (which take it for a local client) or through the host. Nothing
    legitimate carries one: the host's own 127.0.0.1 -> published port leaves masqueraded,
    and its answers arrive addressed to the bridge, not from 127/8. (::1 too: the kernel
    checks only the destination of IPv6 packets for it.) Before conntrack: no entry for them."""
    return [
        [_nfproto("ip"), _match(_meta("iifkind"), "bridge"), _match(_payload("ip", "saddr"), LOOPBACK4),
         {"drop": None}],
        [_nfproto("ip6"), _match(_meta("iifkind"), "bridge"), _match(_payload("ip6", "saddr"), "::1"),
         {"drop": None}],
    ]


def _bridge_isolation_rules() -> list[list[dict]]:
    """A bridge in iso_bridges (an element `bridge . bridge` while it has isolated endpoints,
    see drivers/bridge/shared.py) exchanges nothing with any other bridge: whatever address a
    container sends from (an unassigned one of its subnet included), whatever it is sent to
    (a published port of another network included). Within the bridge (hairpin through the
    gateway) and with the outside it does. As Docker's `-i br ! -o br -o otherbr drop`."""
    iif, oif = _meta("iifname"), _meta("oifname")
    between = {"concat": [iif, oif]}
    return [
        [_match({"concat": [iif, iif]}, "@iso_bridges"), _match(_meta("oifkind"), "bridge"),
         _match(between, "@iso_bridges", "!="), {"drop": None}],
        [_match({"concat": [oif, oif]}, "@iso_bridges"), _match(_meta("iifkind"), "bridge"),
         _match(between, "@iso_bridges", "!="), {"drop": None}],
    ]


def _no_icc_routed_rules() -> list[list[dict]]:
    """icc=false on the routed path: a packet in from a bridge of noicc_bridges and out to the
    same bridge (a container that routes its neighbour through the gateway) is dropped, as
    Docker's `-i br -o br drop`, unless DNATed: a published port reached through the gateway,
    the container's own (hairpin) or a neighbour's. Without a conntrack entry there is no
    status to test: dropped by its state."""
    pair = _match({"concat": [_meta("iifname"), _meta("oifname")]}, "@noicc_bridges")
    return [
        [pair, _match({"ct": {"key": "state"}}, {"set": ["invalid", "untracked"]}), {"drop": None}],
        [pair, _match({"ct": {"key": "status"}}, "dnat", "!"), {"drop": None}],
    ]


def _isolation_rules(proto: str) -> list[list[dict]]:
    """By address, for endpoints recorded by versions before iso_bridges (isoN): they exchange
    nothing with any other bridge network; within their own subnet and with the outside they do."""
    n = "4" if proto == "ip" else "6"
    saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
    return [
        [_nfproto(proto), _match({"concat": [saddr, daddr]}, f"@iso{n}_local"), {"accept": None}],
        [_nfproto(proto), _match({"concat": [daddr, saddr]}, f"@iso{n}_local"), {"accept": None}],
        [_nfproto(proto), _match(saddr, f"@iso{n}"), _match(_meta("oifkind"), "bridge"), {"drop": None}],
        [_nfproto(proto), _match(daddr, f"@iso{n}"), _match(_meta("iifkind"), "bridge"), {"drop": None}],
    ]


def _no_icc_rule() -> list[dict]:
    """icc=false: a frame from one such port to another is not forwarded by the bridge
    (the gateway is the bridge itself: local delivery, not forwarding).

    Except a published port reached through the host (a container's own: hairpin, or a
    neighbour's): with br_netfilter the DNAT happens inside the bridge, and the frame,
    sent to the bridge's MAC, is forwarded to the endpoint's port, maybe the one it came
    from. The bridge marked it for the host on arrival (pkttype host: its destination
    MAC was the bridge's own), which no frame from one container to another carries.
    (`ct status dnat` would say it too, but conntrack in a bridge table needs
    nf_conntrack_bridge and would track every bridged frame.)"""
    return [
        _match(_meta("iifname"), "@noicc"),
        _match(_meta("oifname"), "@noicc"),
        _match(_meta("pkttype"), "host", "!="),
        {"drop": None},
    ]


def _ports_maps(n: str, addr_type: str) -> dict:
    """Published ports of one family: to one host address (key l4proto . address . port)
    and to every address (key l4proto . port); each as two maps with the same keys, one to
    the container address, one to the container port (see the module docstring)."""
    specific = ["inet_proto", addr_type, "inet_service"]
    anywhere = ["inet_proto", "inet_service"]
    return {
        f"ports{n}_addr": {"type": specific, "map": addr_type},
        f"ports{n}_port": {"type": specific, "map": "inet_service"},
        f"ports{n}_any_addr": {"type": anywhere, "map": addr_type},
        f"ports{n}_any_port": {"type": anywhere, "map": "inet_service"},
    }


# Prefix of the set whose name carries the fingerprint of the layout programmed (commit()).
LAYOUT_SET = "layout_"

# family -> sets and maps {name: attributes ("map": value type for a map)},
#           base chains {name: (hook attributes, [rules])}
LAYOUT: dict[str, dict[str, dict]] = {
    "inet": {
        "sets": {
            "masq4": {"type": "ipv4_addr"},
            "masq4_local": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
            "masq6": {"type": "ipv6_addr"},
            "masq6_local": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
            **_ports_maps("4", "ipv4_addr"),
            **_ports_maps("6", "ipv6_addr"),
            "hairpin4": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
            "hairpin6": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
            "noicc_dnat4": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
            "noicc_dnat6": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
            "iso4": {"type": "ipv4_addr"},
            "iso4_local": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
            "iso6": {"type": "ipv6_addr"},
            "iso6_local": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
            # per endpoint: bridge . host veth; per bridge (shared): bridge . bridge
            "iso_ports": {"type": ["ifname", "ifname"]},
            "iso_bridges": {"type": ["ifname", "ifname"]},
            "noicc_ports": {"type": ["ifname", "ifname"]},
            "noicc_bridges": {"type": ["ifname", "ifname"]},
        },
        "chains": {
            "prerouting": (
                {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"},
                _dnat_rules("ip", arriving=True) + _dnat_rules("ip6", arriving=True),
            ),
            "output": (
                {"type": "nat", "hook": "output", "prio": -100, "policy": "accept"},
                _dnat_rules("ip") + _dnat_rules("ip6"),
            ),
            "postrouting": (
                {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
                [_masquerade_rule("ip", "224.0.0.0/4"), _masquerade_rule("ip6", "ff00::/8"),
                 _hairpin_rule("ip"), _hairpin_rule("ip6"), _localhost_rule(),
                 _hairpin_rule("ip", "noicc_dnat"), _hairpin_rule("ip6", "noicc_dnat")],
            ),
            "guard": (
                {"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"},
                _loopback_source_rules(),
            ),
            "forward": (
                {"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"},
                _bridge_isolation_rules() + _no_icc_routed_rules() + _isolation_rules("ip") + _isolation_rules("ip6"),
            ),
            "input": (
                {"type": "filter", "hook": "input", "prio": 0, "policy": "accept"},
                _loopback_guard_rules(),
            ),
        },
    },
    "bridge": {
        "sets": {
            "spoofchk_ports": {"type": "ifname"},
            "spoofchk_allowed": {"type": ["ifname", "ether_addr"]},
            "noicc": {"type": "ifname"},
        },
        "chains": {
            "prerouting": (
                {"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"},
                [_spoof_rule()],
            ),
            "forward": (
                {"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"},
                [_no_icc_rule()],
            ),
        },
    },
}


def declare(family: str, stale_markers: Iterable[str] = ()) -> list[dict]:
    """Commands that create our table of `family` or bring it back to the layout (idempotent),
    ending with the marker set named after the layout's fingerprint (and without the
    `stale_markers` of earlier layouts)."""
    spec = LAYOUT[family]
    base = {"family": family, "table": TABLE}
    cmds: list[dict] = [{"add": {"table": {"family": family, "name": TABLE}}}]
    for name, attrs in spec["sets"].items():
        kind = "map" if "map" in attrs else "set"  # a map's attributes carry its value type as "map"
        cmds.append({"add": {kind: {**base, "name": name, **attrs}}})
    for name, (hook, rules) in spec["chains"].items():
        cmds.append({"add": {"chain": {**base, "name": name, **hook}}})
        cmds.append({"flush": {"chain": {**base, "name": name}}})
        for expr in rules:
            cmds.append({"add": {"rule": {**base, "chain": name, "expr": expr}}})
    for name in stale_markers:
        cmds.append({"delete": {"set": {**base, "name": name}}})
    cmds.append({"add": {"set": {**base, "name": marker(family), "type": "mark"}}})
    return cmds


@functools.lru_cache(maxsize=None)
def marker(family: str) -> str:
    """The name of the empty set that says "this table has exactly this layout": a digest of
    what declare() programs for `family`."""
    spec = json.dumps(LAYOUT[family], sort_keys=True).encode()
    return f"{LAYOUT_SET}{zlib.crc32(spec):08x}"


def _layout_current(family: str) -> dict:
    """A command that fails with ENOENT unless our table of `family` has this layout, and
    otherwise changes nothing: flushing the (always empty) marker set. (Removing an element
    would cost the kernel an RCU grace period, ~15 ms; adding one would leave it behind.)"""
    return {"flush": {"set": {"family": family, "table": TABLE, "name": marker(family)}}}


def _stale_markers(family: str) -> list[str]:
    """Marker sets of other layouts in our table of `family` (an upgrade leaves one)."""
    try:
        data = list_json(["list", "sets", family])
    except NftError:
        return []
    names = [item["set"]["name"] for item in data if "set" in item and item["set"].get("table") == TABLE]
    return [n for n in names if n.startswith(LAYOUT_SET) and n != marker(family)]


# ---- elements ------------------------------------------------------------------------------
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
    route between two of its ports (see _no_icc_routed_rules): the port's own elements and
    the bridge's, shared by all its icc=false endpoints."""
    return [Element("bridge", "noicc", port), Element("inet", "noicc_ports", {"concat": [bridge, port]}),
            Element("inet", "noicc_bridges", {"concat": [bridge, bridge]})]


# Sets whose elements several endpoints share (one per bridge) -> the set of their per-endpoint
# elements: a shared element stays while its bridge has one there (drivers/bridge/shared.py).
SHARED_SETS = {"iso_bridges": "iso_ports", "noicc_bridges": "noicc_ports"}


def set_elements(family: str, names: list[str]) -> list[tuple[Element, str]]:
    """(element, comment) of the named sets of our table of `family` (none when absent)."""
    out = []
    for name in names:
        try:
            data = list_json(["list", "set", family, TABLE, name])
        except NftError as exc:
            if "No such file or directory" in str(exc) or "does not exist" in str(exc):
                continue
            raise
        for item in data:
            for entry in (item.get("set") or {}).get("elem") or []:
                if isinstance(entry, dict) and "elem" in entry:
                    out.append((Element(family, name, entry["elem"]["val"]), entry["elem"].get("comment", "")))
                else:
                    out.append((Element(family, name, entry), ""))
    return out


def noicc_published(address: str, subnet: str) -> list[Element]:
    """icc=false and a published port at `address`: a connection to it from anywhere in
    `subnet` (a neighbour through the gateway) is masqueraded, so the answers go back
    through the host instead of from port to port across the bridge (which icc=false drops)."""
    ip = ipaddress.ip_address(address)
    return [Element("inet", f"noicc_dnat{ip.version}", {"concat": [_prefix(subnet), str(ip)]})]


def published(version: int, anywhere: bool = True) -> list[tuple[Element, str]]:
    """Published ports of one family with their comments: those bound to one host address,
    and (anywhere) those bound to every address. Reads whole maps: for the (usually tiny)
    map of address-bound ports, and for naming the owner once a conflict is known."""
    maps = [f"ports{version}_addr"] + ([f"ports{version}_any_addr"] if anywhere else [])
    return _elements("inet", maps)


def can_create(elements: Iterable[Element]) -> bool:
    """Would creating `elements` succeed, i.e. are none of their keys taken? One keyed
    lookup (`get element`) per element: constant cost, whatever the size of the maps
    (a dry-run transaction would answer too, but the kernel's abort of it waits for an
    RCU grace period, ~10 ms). No table or map yet: nothing is taken."""
    for element in elements:
        command = f"get element {element.family} {TABLE} {element.set} {{ {_key_text(element.key)} }}"
        proc = _nft(["-j", *command.split()], None)
        if proc.returncode == 0:
            return False
        message = _message(proc)
        if "No such file or directory" not in message and "does not exist" not in message:
            raise NftError(message)
    return True


def _key_text(key) -> str:
    """An element key in nft syntax (concatenations as `a . b`)."""
    if isinstance(key, dict) and "concat" in key:
        return " . ".join(str(part) for part in key["concat"])
    return str(key)


def mac_spoof_check(port: str, mac: str) -> list[Element]:
    """Frames entering the bridge from `port` must come from `mac`."""
    return [
        Element("bridge", "spoofchk_ports", port),
        Element("bridge", "spoofchk_allowed", {"concat": [port, mac.lower()]}),
    ]


def _element_cmd(op: str, element: Element, owner: str) -> dict:
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
    return [_element_cmd("add", e, owner) for e in elements]


Wanted = list[tuple[str, list[Element]]]  # [(owner, the elements it needs)]


def commit(add: Iterable[Element] = (), remove: Iterable[Element] = (), owner: str = "",
           live: Callable[[], Wanted] | None = None) -> None:
    """One transaction: add `add`, remove `remove`, in tables whose layout is current.

    Re-declaring the layout (flushing and refilling the base chains) costs the kernel
    ~15 ms, a hundred times adding elements, so the first attempt only checks the
    layout's marker (see _layout_current) in the same transaction; when the table is
    missing or its layout is another (first use, an upgrade, a table deleted by hand, a
    flushed ruleset), the transaction is rolled back whole and repeated with the full
    declaration, and with what `live()` says live owners need that is missing (called only
    then: the caller's live endpoints, whose elements a flush took too)."""
    add, remove = list(add), list(remove)
    if not add and not remove:
        return
    families = sorted({e.family for e in add + remove})
    changes: list[dict] = []
    for element in remove:  # add-then-delete: succeeds whether or not it was there
        changes.append(_element_cmd("add", element, owner))
        changes.append(_element_cmd("delete", element, owner))
    for element in add:
        changes.append(_element_cmd("add", element, owner))
    check = [_layout_current(family) for family in families]
    try:
        run(check + changes)
        return
    except NftError as exc:
        if "No such file or directory" not in str(exc):
            raise
    wanted = live() if live is not None else []
    damage = audit(wanted, families)
    for family in families:  # (whatever the listing says: the check failed, so declare it)
        damage.layout.setdefault(family, "its layout check failed")
    try:
        run(_declare_commands(damage) + changes + _element_commands(damage))
        return
    except NftError as exc:
        if not damage.missing or "File exists" not in str(exc):
            raise
    # A key this command adds is one a live owner lost (a host port the flush freed): the
    # live owner gets it back first; this command then fails on the taken key, as it would
    # have had the flush never happened.
    restore(wanted, families)
    run(check + changes)


def owned(owner: str) -> list[Element]:
    """Every element of our tables whose comment is `owner` (reads the whole sets: for
    cleanup without a record; the normal path removes recorded elements by value)."""
    found = []
    for family in LAYOUT:
        for element, comment in _elements(family):
            if owner_of(comment) == owner:
                found.append(element)
    return found


def owner_of(comment: str) -> str:
    """The owner key of an element's comment ("<owner>" or "<owner> <note>")."""
    return comment.split(" ", 1)[0]


def missing(elements: Iterable[Element]) -> list[Element]:
    """The subset of `elements` that is not in the kernel (for CHECK)."""
    wanted = list(elements)
    present = set()
    for family in sorted({e.family for e in wanted}):
        present.update(e.ident() for e, _ in _elements(family))
    return [e for e in wanted if e.ident() not in present]


def drifted_chains(families: Iterable[str]) -> list[str]:
    """Our base chains whose rules are not the layout's (flushed or edited by hand; commit()
    trusts the marker set and does not look), as "family chain" (for CHECK)."""
    out = []
    for family in sorted(set(families)):
        try:
            data = list_json(["list", "table", family, TABLE])
        except NftError as exc:
            if "No such file or directory" in str(exc):
                out.extend(f"{family} {name}" for name in LAYOUT[family]["chains"])
                continue
            raise
        counts: dict[str, int] = {}
        for item in data:
            if "rule" in item:
                counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
        for name, (_, rules) in LAYOUT[family]["chains"].items():
            if counts.get(name, 0) != len(rules):
                out.append(f"{family} {name}")
    return out


def repair(family: str) -> bool:
    """Declare the layout again where our table of `family` exists but its chains drifted
    (for `cnmctl gc`); True when it did. A missing table is left missing."""
    tables = list_json(["list", "tables", family])
    if not any(item.get("table", {}).get("name") == TABLE for item in tables):
        return False
    if not drifted_chains([family]):
        return False
    run(declare(family, _stale_markers(family)))
    return True


@dataclass
class Damage:
    """What our tables lack against what they should hold (audit()): per family, why its
    layout must be declared again (table missing, another build's layout, a base chain's
    rules changed), and the missing elements of each owner."""

    layout: dict[str, str]  # family -> why
    stale_markers: dict[str, list[str]]  # family -> marker sets of other layouts, deleted on declaring
    missing: Wanted  # [(owner, its elements the kernel lacks)]

    def __bool__(self) -> bool:
        return bool(self.layout or self.missing)


def audit(wanted: Wanted, families: Iterable[str] = ()) -> Damage:
    """Compare our tables with `wanted` [(owner, elements)]: one listing per family of
    `families` and of the wanted elements. An element counts as present when an element of
    the same key is (whoever's: a key is never taken from another owner)."""
    families = sorted(set(families) | {e.family for _, els in wanted for e in els})
    damage = Damage({}, {}, [])
    present: set[str] = set()
    for family in families:
        try:
            data = list_json(["list", "table", family, TABLE])
        except NftError as exc:
            if "No such file or directory" not in str(exc):
                raise
            damage.layout[family] = f"table {family} {TABLE} is missing"
            continue
        present.update(e.ident() for e, _ in _parse_elements(family, data))
        sets = [item["set"]["name"] for item in data if "set" in item]
        damage.stale_markers[family] = [n for n in sets if n.startswith(LAYOUT_SET) and n != marker(family)]
        why = _layout_problem(family, data)
        if why:
            damage.layout[family] = why
    for owner, elements in wanted:
        gone = [e for e in elements if e.ident() not in present]
        if gone:
            damage.missing.append((owner, gone))
    return damage


def _layout_problem(family: str, data: list[dict]) -> str:
    """Why the listing `data` of our table of `family` is not the layout ("" when it is)."""
    names = {item["set"]["name"] for item in data if "set" in item}
    if marker(family) not in names:
        return f"table {family} {TABLE} has another layout (an upgrade, or sets deleted by hand)"
    counts: dict[str, int] = {}
    chains = {item["chain"]["name"] for item in data if "chain" in item}
    for item in data:
        if "rule" in item:
            counts[item["rule"]["chain"]] = counts.get(item["rule"]["chain"], 0) + 1
    for name, (_, rules) in LAYOUT[family]["chains"].items():
        if name not in chains:
            return f"chain {family} {TABLE} {name} is missing"
        if counts.get(name, 0) != len(rules):
            return f"chain {family} {TABLE} {name} does not hold our rules (flushed or edited)"
    return ""


def _declare_commands(damage: Damage) -> list[dict]:
    return [cmd for family in sorted(damage.layout) for cmd in declare(family, damage.stale_markers.get(family, ()))]


def _element_commands(damage: Damage) -> list[dict]:
    return [cmd for owner, elements in damage.missing for cmd in add_commands(elements, owner)]


def restore(wanted: Wanted, families: Iterable[str] = ()) -> Damage:
    """Put back what audit() finds lacking, in one transaction: the layout declared again
    where it is not whole, then the missing elements added (nothing present is removed or
    replaced). Returns what it put back (falsy: nothing lacked). A key taken between the
    listing and the transaction (a command publishing the same port) fails the
    transaction: listed and tried once more."""
    families = list(families)
    for attempt in (1, 2):
        damage = audit(wanted, families)
        if not damage:
            return damage
        try:
            run(_declare_commands(damage) + _element_commands(damage))
            return damage
        except NftError as exc:
            if attempt == 2 or "File exists" not in str(exc):
                raise
    return damage


def elements_with_comments(family: str) -> list[tuple[Element, str]]:
    """Every element of our table of `family` with its comment (its owner): for sweeps."""
    return _elements(family)


def _elements(family: str, maps: list[str] | None = None) -> list[tuple[Element, str]]:
    """(element, comment) of our table of `family`, or of the named maps only."""
    try:
        if maps:
            data = [item for name in maps for item in list_json(["list", "map", family, TABLE, name])]
        else:
            data = list_json(["list", "table", family, TABLE])
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    return _parse_elements(family, data)


def _parse_elements(family: str, data: list[dict]) -> list[tuple[Element, str]]:
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


# ---- running nft: libnftables in process, else the nft binary ----------------------------
def run(commands: list[dict]) -> None:
    doc = json.dumps({"nftables": commands}).encode()
    proc = _nft(["-j", "-f", "-"], doc)
    if proc.returncode != 0:
        raise NftError(_message(proc))


def list_json(args: list[str]) -> list[dict]:
    proc = _nft(["-j", *args], None)
    if proc.returncode != 0:
        raise NftError(_message(proc))
    try:
        return json.loads(proc.stdout or b"{}").get("nftables", [])
    except ValueError as exc:
        raise NftError(f"nft printed invalid JSON: {exc}") from None


def backend() -> str:
    """"libnftables" (in process) or "exec" (the nft binary): CNM_NFT=exec forces the
    binary, e.g. to compare both; the library is used whenever the node has it."""
    return "libnftables" if _library() is not None else "exec"


def _library():
    if os.environ.get(BACKEND_ENV) == "exec":
        return None
    from . import libnft

    return libnft if libnft.library() is not None else None


def _nft(args: list[str], stdin: bytes | None):
    """`nft ARGS` with `stdin` (only `-j`, `-f -` and a command's words are used)."""
    lib = _library()
    if lib is not None:
        words = [a for a in args if a not in ("-j", "-f", "-")]
        command = stdin if stdin is not None else " ".join(words).encode()
        try:
            return lib.run(command)
        except OSError as exc:
            raise NftError(f"cannot run libnftables: {exc}") from None
    import subprocess

    try:
        return subprocess.run([NFT, *args], input=stdin, capture_output=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NftError(f"cannot run nft: {exc}") from None


def _message(proc) -> str:
    text = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()
    return " ".join(text.split())[:500] or f"nft exited with {proc.returncode}"
