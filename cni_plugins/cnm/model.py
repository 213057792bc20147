"""CNM objects (libnetwork's model, DESIGN.md §2). Plain data; no kernel, no CNI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

HOST_SANDBOX = "host"


def endpoint_id(network: str, container_id: str, ifname: str) -> str:
    """Stable id of the attachment (network, container, ifname): names kernel objects we own."""
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:24]


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
