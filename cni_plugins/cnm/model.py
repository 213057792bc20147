"""CNM objects (libnetwork's model). Plain data; no kernel, no CNI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

HOST_SANDBOX = "host"

# An endpoint's phase: the record is written before the kernel is touched (an intent), so
# every kernel object and lease we make has a record naming it, even after a crash.
ADDING = "adding"  # ADD recorded its intent; kernel/IPAM work under way or died half-way
READY = "ready"  # the ADD committed (active, or kept for the other members of its sandbox)
DELETING = "deleting"  # a DEL/GC is tearing it down (or failed to: data["del_error"])
PHASES = (ADDING, READY, DELETING)


def endpoint_id(network: str, container_id: str, ifname: str) -> str:
    """Stable id of the attachment (network, container, ifname): names kernel objects we own."""
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:24]


STORE_TAG_LEN = 12  # hex digits of the store id that tag our kernel objects


def owner_tag(store_id: str, endpoint: str) -> str:
    """The tag an endpoint's kernel objects carry (nft element comments, the host veth's alias):
    `<endpoint id>@<store tag>`, so a sweep can prove an object is its own store's."""
    return f"{endpoint}@{store_id[:STORE_TAG_LEN]}"


def parse_owner_tag(text: str) -> tuple[str, str] | None:
    """(endpoint id, store tag) of an owner tag; None for anything else (an older version's
    untagged owner, or not ours at all)."""
    endpoint, sep, tag = text.partition("@")
    if not sep or len(endpoint) != 24 or len(tag) != STORE_TAG_LEN:
        return None
    if not all(c in "0123456789abcdef" for c in endpoint + tag):
        return None
    return endpoint, tag


@dataclass
class Network:
    """A network config seen by ADD; `options` are the driver's immutable settings."""

    name: str
    driver: str
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # driver/IPAM choices (e.g. picked subnet)


@dataclass
class Sandbox:
    """A network stack (netns); its members are the containers attached to it."""

    id: str
    netns: str  # the path the first ADD named
    ns_dev: int
    ns_ino: int
    pin: str = ""  # our own bind mount of the netns ("" for the host sandbox)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_host(self) -> bool:
        return self.id == HOST_SANDBOX


@dataclass
class Endpoint:
    """One attachment: (network, container, ifname) in a sandbox, realised by a driver.

    `active` is false once its container sent DEL while other containers still
    share the sandbox; the driver's resources then stay until the last member leaves.
    """

    id: str
    network: str
    sandbox: str
    container_id: str
    ifname: str
    driver: str
    active: bool = True
    data: dict[str, Any] = field(default_factory=dict)  # driver state: host veth, MAC, IPs, IPAM config
    phase: str = READY
