"""The Driver protocol (libnetwork's driverapi, reduced to what CNI needs).

Endpoints are two-phase as in CNM: create_endpoint reserves (addresses, MAC),
join wires the endpoint into the sandbox's netns. Teardown is the reverse and
must work from the endpoint's recorded data alone: the netns, the config and
the prevResult of the current request may all be gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from ..cni import versions
from ..cni.request import Request
from ..cni.result import Result
from ..cnm.model import Endpoint, Network, Sandbox


@dataclass
class Context:
    """What a driver may use besides the CNM objects."""

    request: Request  # the command being served (its config may differ from the endpoint's ADD)
    netns_fd: int | None  # the sandbox's netns, open; None when it is gone
    env: Mapping[str, str]  # the plugin's environment (for delegated IPAM)
    # The sandbox's other endpoints (any driver), for drivers that report or check the
    # whole sandbox (cnm-container); each carries its recorded ADD (see recorded_result).
    peers: tuple[Endpoint, ...] = ()


# endpoint.data[RECORD_KEY]: what the controller recorded at ADD, for every driver:
# {"result": the ADD result (newest version), "stdin": the ADD config, "args": CNI_ARGS}.
# It lets a DEL/CHECK that arrives through another plugin type (the last member of a
# shared sandbox) act on this endpoint with its own config, and lets joiners replay it.
RECORD_KEY = "cni"


def record_add(endpoint: Endpoint, request: Request, result: Result) -> None:
    endpoint.data[RECORD_KEY] = {
        "result": result.emit(versions.LATEST),
        "stdin": request.stdin.decode("utf-8", errors="replace"),
        "args": request.env.get("CNI_ARGS", ""),
    }


def recorded_result(endpoint: Endpoint) -> Result | None:
    raw = (endpoint.data.get(RECORD_KEY) or {}).get("result")
    return Result.parse(raw, versions.LATEST) if raw else None


class Driver(Protocol):
    name: str
    # True when the driver's endpoints live in the host netns (no code-8 guard).
    uses_host_netns: bool
    # True when ADD adds a member to the sandbox of another container (cnm-container)
    # instead of finding/creating the sandbox by CNI_NETNS; then the driver names the
    # container with target_container(request).
    joins_sandbox: bool
    # True when the endpoint owns nothing (only a membership): it goes at once on DEL,
    # and it is never part of the sandbox's own reported state.
    membership_only: bool

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
    joins_sandbox = False
    membership_only = False

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
