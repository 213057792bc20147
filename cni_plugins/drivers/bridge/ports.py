"""Published ports of a bridge endpoint (runtimeConfig.portMappings, Docker's -p).

A mapping becomes two map elements per container address family (the DNAT
address and port under the key l4proto . host address . host port, see
linux/nft/layout.py), plus one hairpin element per container address. The nft maps are
the truth about which host ports are taken: a new mapping is compared with the
published ports of its family before anything changes (the controller's store
transaction serialises ADDs, so nothing slips in between), and refused naming
the owner, whose endpoint id and container id are the elements' comment.

One container may publish the same port on several of its networks (podman
`--network a,b -p 8300:80`), as the reference portmap allows: there every network
appends a DNAT rule, the first ADDed answers, and when it is DELed the next one's
rule takes over. A map holds one element per key, so the endpoint that published
first owns it; a sibling (same container, same sandbox, another network) records
its own element without installing it, and the owner's DEL hands the key to the
earliest-published remaining sibling (handover). Who owns a key is the kernel's
comment, what each sibling wants is its record: nothing lives in process memory.

A sibling in another store (a network with its own stateDir) is known by the kernel
alone: the element's comment names this container and another store, and the address
the port leads to is in this ADD's network namespace. Its record cannot be read from the
owner's store. So every sibling that waits for a key also enlists what it would install
in the node's run dir (standby.py; a key may pass to another store before its turn comes),
and a DEL hands a freed key to the earliest-published sibling, recorded or enlisted.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Iterable

from ...cni.errors import CONFLICT, INVALID_CONFIG, CNIError
from ...cni.request import Request

PROTOCOLS = ("tcp", "udp", "sctp")
KEY = "runtimeConfig.portMappings"


@dataclass(frozen=True)
class Mapping:
    proto: str
    host_port: int
    container_port: int
    host_ip: str | None  # None: every local address
    family: int | None  # 4 or 6; None: both (no hostIP)

    def applies(self, version: int) -> bool:
        return self.family in (None, version)

    def overlaps(self, proto: str, host, port: int) -> bool:
        """Same protocol and port, and either side binds every address or both the same one."""
        if proto != self.proto or port != self.host_port:
            return False
        if self.host_ip is None or host is None:
            return True
        return ipaddress.ip_address(host) == ipaddress.ip_address(self.host_ip)

    def __str__(self) -> str:
        host = self.host_ip or {4: "0.0.0.0", 6: "[::]", None: "*"}[self.family]
        if self.host_ip and ":" in self.host_ip:
            host = f"[{self.host_ip}]"
        return f"{self.proto} {host}:{self.host_port}"


def _bad(detail: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid {KEY}", detail)


def _port(item: dict, name: str, index: int) -> int:
    value = item.get(name.lower())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise _bad(f"entry {index}: {name} must be a port number 1-65535, got {value!r}")
    return value


def requested(request: Request, default_host_ip: str = "") -> list[Mapping]:
    """The mappings of this request (keys matched case-insensitively); code 7 on bad input."""
    raw = request.runtime_config("portMappings")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("must be a list of {hostPort, containerPort, protocol, hostIP}")
    mappings: list[Mapping] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"entry {index} is not an object")
        host_port = _port(item, "hostPort", index)
        container_port = _port(item, "containerPort", index)
        proto = item.get("protocol")
        if proto is None or proto == "":
            proto = "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise _bad(f"entry {index}: protocol must be one of tcp, udp, sctp, got {proto!r}")
        host_ip = item.get("hostip")
        if host_ip is not None and not isinstance(host_ip, str):
            raise _bad(f"entry {index}: hostIP must be a string, got {host_ip!r}")
        host_ip = host_ip or default_host_ip
        mapping = _mapping(proto.lower(), host_port, container_port, host_ip, index)
        if mapping in mappings:
            continue
        for other in mappings:
            if other.family in (None, mapping.family) or mapping.family is None:
                if other.overlaps(mapping.proto, mapping.host_ip, mapping.host_port):
                    raise _bad(f"entry {index}: {mapping} is mapped twice")
        mappings.append(mapping)
    return mappings


def host_address(text: str):
    """A host address to publish on (hostIP, hostBindingIP), read exactly; ValueError saying
    why not for what is no address (surrounding space included), an IPv6 zone
    (`fe80::1%eth0`: nftables has no syntax for one), an IPv4-mapped IPv6 address (an
    IPv6 binding that no packet ever matches: IPv4 packets to that address are IPv4) and ::1
    (never answered: the reference portmap accepts it and answers nothing either)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("is not an IP address") from None
    if ip.version == 6 and ip.scope_id:
        raise ValueError("has an IPv6 zone, which nftables cannot match; publish on the address alone")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        raise ValueError(f"is an IPv4-mapped IPv6 address, which no packet matches; use {ip.ipv4_mapped}")
    if ip.version == 6 and ip.is_loopback:
        raise ValueError("is the IPv6 loopback address, which the kernel never lets leave lo for a container "
                         "(IPv6 has no route_localnet); use 127.0.0.1")
    return ip


def _mapping(proto: str, host_port: int, container_port: int, host_ip: str, index: int) -> Mapping:
    if not host_ip:
        return Mapping(proto, host_port, container_port, None, None)
    try:
        ip = host_address(host_ip)
    except ValueError as exc:
        raise _bad(f"entry {index}: hostIP {host_ip!r} {exc}") from None
    if ip.is_unspecified:  # 0.0.0.0 / :: : every address of that family
        return Mapping(proto, host_port, container_port, None, ip.version)
    return Mapping(proto, host_port, container_port, str(ip), ip.version)


def elements(mappings: Iterable[Mapping], addresses: list[tuple[str, str]], note: str) -> list:
    """nft elements for `mappings` to the container `addresses` [(ip, subnet)]."""
    from ...linux import nft

    out = []
    mappings = list(mappings)
    for ip, subnet in addresses:
        version = ipaddress.ip_address(ip).version
        applying = [m for m in mappings if m.applies(version)]
        for m in applying:
            out.extend(nft.published_port(m.proto, m.host_ip, m.host_port, ip, m.container_port, note))
        if applying:
            out.extend(nft.hairpin(ip, subnet))
    return out


def families(mappings: Iterable[Mapping], addresses: list[tuple[str, str]]) -> set[int]:
    versions = {ipaddress.ip_address(ip).version for ip, _ in addresses}
    return {v for v in versions if any(m.applies(v) for m in mappings)}


@dataclass
class Claim:
    """What the kernel holds of a new endpoint's published ports."""

    stale: list = field(default_factory=list)  # its own elements from an ADD whose record was lost: replaced
    held: set = field(default_factory=set)  # slots a sibling already publishes: recorded, not installed


def slot(element) -> str:
    """A published port's key in the kernel, the same for its two map elements (the
    container address map and the container port map)."""
    prefix = element.set.rsplit("_", 1)[0]  # ports4_any_addr -> ports4_any
    return f"{element.family}/{prefix}/{json.dumps(element.key, sort_keys=True)}"


def is_port(element) -> bool:
    return element.set.startswith("ports")


def ensure_free(mappings: list[Mapping], addresses: list[tuple[str, str]], owner: str,
                siblings: frozenset = frozenset(), same_container=None) -> Claim:
    """Refuse (code 102, naming the owner) a mapping whose host port another container
    publishes; return this endpoint's own stale elements (a lost record) to replace, and
    the keys its `siblings` (endpoint ids of the same container) already publish, or a
    sibling in another store does: `same_container(container, address)` says whether an
    element commented with `container` and leading to `address` is this container's.

    Constant cost in the common case: one dry-run transaction asks the kernel whether the
    new keys (and, for an address-bound port, the every-address key of the same port) are
    free; only a port bound to every address is also compared with the address-bound
    ports, a map that is read whole but is usually tiny. The owner is looked up only once a
    conflict is known."""
    from ...linux import nft

    versions = sorted(families(mappings, addresses))
    probes = []
    for version in versions:
        for m in mappings:
            if m.applies(version):
                probes.extend(nft.port_elements(m.proto, m.host_ip, m.host_port, version, _zero(version), 1)[:1])
                if m.host_ip:
                    probes.extend(nft.port_elements(m.proto, None, m.host_port, version, _zero(version), 1)[:1])
    free = nft.can_create(probes)
    claim = Claim()
    for version in versions:
        if not free:
            _compare(mappings, version, nft.published(version), owner, siblings, same_container, claim)
        elif any(m.host_ip is None for m in mappings if m.applies(version)):
            _compare(mappings, version, nft.published(version, anywhere=False), owner, siblings, same_container,
                     claim)
    if not free and not claim.stale and not claim.held:
        # the kernel saw a taken key that is gone by now: say so, change nothing
        raise CNIError(CONFLICT, "port already allocated", "nftables refused a published port; retry")
    return claim


def _zero(version: int) -> str:
    return "0.0.0.0" if version == 4 else "::"


def _compare(mappings: list[Mapping], version: int, taken, owner: str, siblings, same_container,
             claim: Claim) -> None:
    """Raise on the first published port of another container that a mapping overlaps;
    collect the overlapping ones of `owner` itself (stale) and the keys a sibling holds."""
    from ...linux import nft

    for m in mappings:
        if not m.applies(version):
            continue
        mine = slot(nft.port_elements(m.proto, m.host_ip, m.host_port, version, _zero(version), 1)[0])
        for element, comment in taken:
            proto, host, port = nft.binding_of(element)
            if not m.overlaps(proto, host, port):
                continue
            holder = nft.owner_of(comment)  # <endpoint id>@<store tag> (an older build: the id alone)
            if holder == owner:
                claim.stale.append(element)
                continue
            container = comment.split(" ", 1)[1] if " " in comment else "unknown"
            # the same container on another network (of this store, or another): shared, as the reference
            if endpoint_of(holder) in siblings or (same_container is not None and _other_store(holder, owner)
                                                   and same_container(container, element.data)):
                if slot(element) == mine:
                    claim.held.add(mine)
                continue
            theirs = Mapping(proto, port, 0, host, version)
            raise CNIError(
                CONFLICT,
                f"port already allocated: {m} (requested by this container) is published by container {container}",
                f"{theirs} -> {element.data} belongs to endpoint {holder} (container {container})",
            )


def _other_store(holder: str, owner: str) -> bool:
    """`holder` is tagged with a store, and not with the store of `owner`."""
    theirs, mine = holder.partition("@")[2], owner.partition("@")[2]
    return bool(theirs) and theirs != mine


def installable(elements: list, held: set) -> list:
    """`elements` without the published ports a sibling holds."""
    if not held:
        return elements
    return [e for e in elements if not (is_port(e) and slot(e) in held)]


# ---- DEL: what an endpoint removes, and whom its ports pass to ------------------------------------
PUBLISHED_AT = "published_at"  # endpoint.data: when the endpoint published (orders the handover)


@dataclass(frozen=True)
class Heir:
    """An endpoint of the same container that may take over a published port on DEL."""

    owner: str  # the owner tag its elements carry
    seniority: tuple  # (published_at, ...): who published first takes a key first
    elements: list  # its published-port elements (recorded, or enlisted by another store)


def release(recorded: list, owner: str, heirs: list[Heir],
            shared: bool = False) -> tuple[list, list[tuple[Heir, list]]]:
    """The elements the endpoint tagged `owner` removes on DEL, and [(heir, elements it
    installs)].

    Without an heir that publishes one of its keys (the common case) it removes its whole
    record by value, and reads nothing. Otherwise (or when `shared`: another endpoint may
    hold one of its keys) it removes only the published ports the kernel says it owns (or
    that nobody holds), and each freed key passes to the heir that published earliest,
    which installs its own elements for it."""
    mine = {slot(e) for e in recorded if is_port(e)}
    heirs = [h for h in heirs if any(slot(e) in mine for e in h.elements)] if mine else []
    if not heirs and not (shared and mine):
        return recorded, []
    owners = _kernel_owners(recorded)
    me = {owner, endpoint_of(owner)}  # (an older build tagged elements with the endpoint id alone)
    freed = {k for k in mine if owners.get(k, owner) in me}
    remove = [e for e in recorded if not is_port(e) or slot(e) in freed]
    handover = []
    for heir in sorted(heirs, key=lambda h: h.seniority):
        theirs = [e for e in heir.elements if slot(e) in freed]
        if theirs:
            handover.append((heir, theirs))
            freed -= {slot(e) for e in theirs}
    return remove, handover


def _kernel_owners(elements: list) -> dict[str, str]:
    """slot -> owner (as tagged) of the published ports among `elements` that the kernel holds."""
    from ...linux import nft

    versions = {int(e.set[len("ports")]) for e in elements if is_port(e)}  # ports4_... / ports6_...
    out = {}
    for version in sorted(versions):
        for element, comment in nft.published(version):
            out[slot(element)] = nft.owner_of(comment)
    return out


def endpoint_of(owner: str) -> str:
    """The endpoint id of an element's owner tag."""
    return owner.split("@", 1)[0]
