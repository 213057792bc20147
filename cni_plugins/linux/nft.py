"""Our nftables tables, programmed through nft's JSON interface (`nft -j -f -`).

Layout (DESIGN.md §3: kernel objects we own carry our identity):

    table inet cnm      NAT and filtering for addresses (ipMasq now; published ports
                        and isolation later). Rules are static; what varies per
                        endpoint lives in sets/maps, so an ADD or DEL changes a few
                        elements and its cost does not grow with the number of
                        endpoints.
    table bridge cnm    L2 checks on bridge ports (MAC spoof check).

Every element carries its owner's key (the endpoint id) as its comment, so the
entries of an endpoint can be found and removed with nothing but that key.

Each `commit()` is ONE nft transaction: it (re)declares the layout — `add` of a
table/set/chain is idempotent and base chains are flushed and refilled with the
same static rules — then adds and removes elements. Removal is "add, then delete"
inside the same transaction, which succeeds whether or not the element existed
(nft 1.0.6 has no `destroy`), so DEL stays idempotent.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any, Iterable

NFT = "nft"
TABLE = "cnm"
TIMEOUT_S = 60


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


# family -> sets and maps {name: attributes ("map": value type for a map)},
#           base chains {name: (hook attributes, [rules])}
LAYOUT: dict[str, dict[str, dict]] = {
    "inet": {
        "sets": {
            "masq4": {"type": "ipv4_addr"},
            "masq4_local": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
            "masq6": {"type": "ipv6_addr"},
            "masq6_local": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
        },
        "chains": {
            "postrouting": (
                {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
                [_masquerade_rule("ip", "224.0.0.0/4"), _masquerade_rule("ip6", "ff00::/8")],
            ),
        },
    },
    "bridge": {
        "sets": {
            "spoofchk_ports": {"type": "ifname"},
            "spoofchk_allowed": {"type": ["ifname", "ether_addr"]},
        },
        "chains": {
            "prerouting": (
                {"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"},
                [_spoof_rule()],
            ),
        },
    },
}


def declare(family: str) -> list[dict]:
    """Commands that create our table of `family` or bring it back to the layout (idempotent)."""
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
    return cmds


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


def mac_spoof_check(port: str, mac: str) -> list[Element]:
    """Frames entering the bridge from `port` must come from `mac`."""
    return [
        Element("bridge", "spoofchk_ports", port),
        Element("bridge", "spoofchk_allowed", {"concat": [port, mac.lower()]}),
    ]


def _element_cmd(op: str, element: Element, owner: str) -> dict:
    value: Any = element.key
    if op == "add":
        value = {"elem": {"val": element.key, "comment": owner}}
        if element.data is not None:
            value = [value, element.data]
    elif element.data is not None:
        value = [element.key, element.data]
    return {op: {"element": {"family": element.family, "table": TABLE, "name": element.set, "elem": [value]}}}


def commit(add: Iterable[Element] = (), remove: Iterable[Element] = (), owner: str = "") -> None:
    """One transaction: declare the layout of the families touched, add `add`, remove `remove`."""
    add, remove = list(add), list(remove)
    if not add and not remove:
        return
    families = sorted({e.family for e in add + remove})
    cmds: list[dict] = []
    for family in families:
        cmds.extend(declare(family))
    for element in remove:  # add-then-delete: succeeds whether or not it was there
        cmds.append(_element_cmd("add", element, owner))
        cmds.append(_element_cmd("delete", element, owner))
    for element in add:
        cmds.append(_element_cmd("add", element, owner))
    run(cmds)


def owned(owner: str) -> list[Element]:
    """Every element of our tables whose comment is `owner` (reads the whole sets: for
    cleanup without a record; the normal path removes recorded elements by value)."""
    found = []
    for family in LAYOUT:
        for element, comment in _elements(family):
            if comment == owner:
                found.append(element)
    return found


def missing(elements: Iterable[Element]) -> list[Element]:
    """The subset of `elements` that is not in the kernel (for CHECK)."""
    wanted = list(elements)
    present = set()
    for family in sorted({e.family for e in wanted}):
        present.update(e.ident() for e, _ in _elements(family))
    return [e for e in wanted if e.ident() not in present]


def _elements(family: str) -> list[tuple[Element, str]]:
    try:
        data = list_json(["list", "table", family, TABLE])
    except NftError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
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


# ---- the nft binary ------------------------------------------------------------------------
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


def _nft(args: list[str], stdin: bytes | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([NFT, *args], input=stdin, capture_output=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NftError(f"cannot run nft: {exc}") from None


def _message(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()
    return " ".join(text.split())[:500] or f"nft exited with {proc.returncode}"
