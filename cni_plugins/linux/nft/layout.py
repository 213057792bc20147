"""Our nftables tables: what they hold, as nft JSON (what declare() programs).

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

The layout's fingerprint names an empty marker set (marker()): a table holding it has
exactly this layout, which one cheap command in every transaction checks (layout_current()).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import zlib
from typing import Iterable

TABLE = "cnm"

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


def layout_current(family: str) -> dict:
    """A command that fails with ENOENT unless our table of `family` has this layout, and
    otherwise changes nothing: flushing the (always empty) marker set. (Removing an element
    would cost the kernel an RCU grace period, ~15 ms; adding one would leave it behind.)"""
    return {"flush": {"set": {"family": family, "table": TABLE, "name": marker(family)}}}
