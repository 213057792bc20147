"""The Driver protocol (libnetwork's driverapi, reduced to what CNI needs).

Endpoints are two-phase as in CNM: create_endpoint reserves (addresses, MAC),
join wires the endpoint into the sandbox's netns. Teardown is the reverse and
must work from the endpoint's recorded data alone: the netns, the config and
the prevResult of the current request may all be gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from ..cni.request import Request
from ..cni.result import Result
from ..cnm.model import Endpoint, Network, Sandbox


@dataclass
class Context:
    """What a driver may use besides the CNM objects."""

    request: Request  # the command being served (its config may differ from the endpoint's ADD)
    netns_fd: int | None  # the sandbox's netns, open; None when it is gone
    env: Mapping[str, str]  # the plugin's environment (for delegated IPAM)


class Driver(Protocol):
    name: str
    # True when the driver's endpoints live in the host netns (no code-8 guard).
    uses_host_netns: bool

    def network_options(self, request: Request) -> dict[str, Any]:
        """Validate the config (CNIError code 7 naming the key) and return immutable options."""

    def create_endpoint(self, ctx: Context, network: Network, endpoint: Endpoint) -> None: ...

    def join(self, ctx: Context, network: Network, endpoint: Endpoint, sandbox: Sandbox) -> Result: ...

    def leave(self, ctx: Context, network: Network | None, endpoint: Endpoint, sandbox: Sandbox | None) -> None: ...

    def delete_endpoint(self, ctx: Context, network: Network | None, endpoint: Endpoint) -> None: ...

    def check(self, ctx: Context, network: Network, endpoint: Endpoint, sandbox: Sandbox, prev: Result | None) -> None: ...

    def status(self, request: Request) -> None: ...


class BaseDriver:
    """Defaults for drivers that own nothing outside the sandbox."""

    name = "base"
    uses_host_netns = False

    def network_options(self, request: Request) -> dict[str, Any]:
        return {}

    def create_endpoint(self, ctx: Context, network: Network, endpoint: Endpoint) -> None:
        return None

    def leave(self, ctx, network, endpoint, sandbox) -> None:
        return None

    def delete_endpoint(self, ctx, network, endpoint) -> None:
        return None

    def check(self, ctx, network, endpoint, sandbox, prev) -> None:
        return None

    def status(self, request: Request) -> None:
        return None
