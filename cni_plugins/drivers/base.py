"""The Driver protocol (libnetwork's driverapi, reduced to what CNI needs).

Endpoints are two-phase as in CNM: create_endpoint reserves (addresses, MAC),
join wires the endpoint into the sandbox's netns. Teardown is the reverse and
must work from the endpoint's recorded data alone: the netns, the config and
the prevResult of the current request may all be gone.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping

from ..cni import versions
from ..cni.request import Request
from ..cni.result import Result
from ..cnm.model import Endpoint, Network, Sandbox, owner_tag


@dataclass
class Context:
    """What a driver may use besides the CNM objects."""

    request: Request  # the command being served (its config may differ from the endpoint's ADD)
    netns_fd: int | None  # the sandbox's netns, open; None when it is gone
    env: Mapping[str, str]  # the plugin's environment (for delegated IPAM)
    # The sandbox's other endpoints (any driver), for drivers that report or check the
    # whole sandbox (cnm-container); each carries its recorded ADD (see recorded_result).
    peers: tuple[Endpoint, ...] = ()
    store_id: str = ""  # the store's identity: kernel objects are tagged with it (owner())
    # node_lock(name): a context manager serialising one kind of node-wide work across
    # every store and process (e.g. "ports": check-then-publish of host ports)
    node_lock: Callable[[str], ContextManager[None]] | None = None
    # The store's live (READY) endpoints, read when called: for work that must put back
    # what they all need (nft.commit re-declaring our tables after a flush)
    live_endpoints: Callable[[], list[Endpoint]] | None = None
    # The driver's own plan for this command: Driver.plan() computes it once (parsed config,
    # requested ports), create_endpoint() and join() read and complete it. Never persisted:
    # what teardown needs goes to endpoint.data; a driver keeps nothing on self.
    plan: Any = None

    def owner(self, endpoint: Endpoint) -> str:
        """The tag `endpoint`'s kernel objects carry (nft comments, veth alias)."""
        return self.owner_of(endpoint.id)

    def owner_of(self, endpoint_id: str) -> str:
        return owner_tag(self.store_id, endpoint_id) if self.store_id else endpoint_id

    def locked(self, name: str) -> ContextManager[None]:
        return self.node_lock(name) if self.node_lock is not None else nullcontext()


# endpoint.data["resumed"]: set by the teardown when it resumes one that stopped half-way (or
# undoes an ADD that did): remove only what the kernel still tags as this endpoint's.
RESUMED_KEY = "resumed"

# endpoint.data[RECORD_KEY]: what the controller recorded at ADD, for every driver:
# {"result": the ADD result (newest version), "stdin": the ADD config, "args": CNI_ARGS}.
# It lets a DEL/CHECK that arrives through another plugin type (the last member of a
# shared sandbox) act on this endpoint with its own config, and lets joiners replay it.
RECORD_KEY = "cni"


def record_add(endpoint: Endpoint, request: Request, result: Result | None = None) -> None:
    """The ADD's config and CNI_ARGS (recorded with the intent), and its result once known."""
    endpoint.data[RECORD_KEY] = {
        "stdin": request.stdin.decode("utf-8", errors="replace"),
        "args": request.env.get("CNI_ARGS", ""),
    }
    if result is not None:
        endpoint.data[RECORD_KEY]["result"] = result.emit(versions.LATEST)


def recorded_result(endpoint: Endpoint) -> Result | None:
    raw = (endpoint.data.get(RECORD_KEY) or {}).get("result")
    return Result.parse(raw, versions.LATEST) if raw else None


@dataclass
class Orphan:
    """Something of a driver's kind, found by a sweep, that no endpoint record owns.
    `removable`: provably this store's (tagged with its id), so a sweep removes it; else it is
    only reported (another store's, an older version's, or a lease this store did not write)."""

    kind: str  # e.g. veth, nft, lease
    name: str
    detail: str
    removable: bool
    owner: str = ""  # the endpoint id it is tagged with (re-checked before removal)
    targets: list = field(default_factory=list)


@dataclass
class Loss:
    """Something live endpoints of the store need in the kernel and no longer have (our
    nftables flushed by a firewall reload, a table or chain deleted), found by a sweep
    (Driver.losses). `cnmctl doctor` and STATUS report it; `cnmctl gc`, the resident helper
    and the store's next command that re-declares the tables put it back from the records."""

    kind: str  # e.g. nft-layout, nft-missing
    name: str
    detail: str
    owner: str = ""  # the endpoint id whose record it restores ("" for what all share)


class Driver:
    """The contract every driver implements (libnetwork's driverapi, reduced to what CNI
    needs). Every method and ability is declared here with its default; a driver overrides
    what it does. The controller records an endpoint's intent (after plan()) before it calls
    create_endpoint(), so teardown (leave, delete_endpoint) must work on an endpoint whose
    ADD stopped anywhere after plan(), from its recorded data alone."""

    name = "base"
    # Its endpoints live in the host netns (no code-8 guard).
    uses_host_netns = False
    # ADD adds a member to the sandbox of another container (cnm-container) instead of
    # finding/creating the sandbox by CNI_NETNS; the container is target_container(request).
    joins_sandbox = False
    # The endpoint owns nothing (only a membership): it goes at once on DEL, and it is
    # never part of the sandbox's own reported state.
    membership_only = False
    # leave() and delete_endpoint() touch independent kernel objects and may run at once.
    leave_overlaps_delete = False

    def network_options(self, request: Request) -> dict[str, Any]:
        """Validate the config (CNIError code 7 naming the key) and return immutable options."""
        return {}

    def target_container(self, request: Request) -> str:
        raise NotImplementedError

    def plan(self, ctx: Context, network: Network, endpoint: Endpoint) -> None:
        """Record in endpoint.data what teardown will need (names, the IPAM call), before any
        change: no kernel, no IPAM here."""
        return None

    def create_endpoint(self, ctx: Context, network: Network, endpoint: Endpoint) -> None:
        """Reserve (addresses: IPAM)."""
        return None

    def join(self, ctx: Context, network: Network, endpoint: Endpoint, sandbox: Sandbox) -> Result:
        raise NotImplementedError

    def leave(self, ctx: Context, network: Network | None, endpoint: Endpoint, sandbox: Sandbox | None) -> None:
        return None

    def delete_endpoint(self, ctx: Context, network: Network | None, endpoint: Endpoint) -> None:
        return None

    def delete_unrecorded(self, ctx: Context, endpoint_id: str) -> None:
        """DEL of an attachment with no record (never added, repeated, lost): converge."""
        return None

    def check(self, ctx: Context, network: Network, endpoint: Endpoint, sandbox: Sandbox, prev: Result | None) -> None:
        return None

    def status(self, request: Request) -> None:
        """Raise CNIError 50 when an ADD cannot succeed now."""
        return None

    def degraded(self, request: Request, endpoints) -> str | None:
        """STATUS 51: what existing endpoints of this network have lost (None: nothing)."""
        return None

    def health(self, network: Network, endpoints: list[Endpoint]) -> list[str]:
        """`cnmctl doctor`: what keeps this network's endpoints from working now, one sentence
        each (e.g. the link they hang off is down); read-only, [] when nothing."""
        return []

    def gc(self, request: Request, valid, remaining: list[Endpoint]) -> None:
        """CNI GC beyond the endpoints (the controller collected those): e.g. forward it to the
        IPAM. `remaining`: the network's endpoints still recorded after that (kept for the
        other members of their sandbox, or busy): what they hold must stay."""
        return None

    def orphans(self, ctx: Context, endpoints: list[Endpoint]) -> list[Orphan]:
        """Sweeps: this driver's kernel objects and files in this network namespace that no
        endpoint of the store owns (removable only when tagged with `ctx.store_id`)."""
        return []

    def remove_orphan(self, ctx: Context, orphan: Orphan) -> None:
        """Remove a removable orphan; the caller holds the store's write lock and has checked
        that no endpoint record owns it."""
        return None

    def name_server_addresses(self, ctx: Context, network: Network, endpoint: Endpoint) -> list[tuple[str, str]]:
        """Names on the network (config `dnsEnabled`, drivers/dns/): where its name server
        listens for this joined endpoint, as (gateway address, host interface it is on) per
        family. [] (the default): the endpoint reaches no gateway on the host, no names."""
        return []

    def losses(self, store_id: str, endpoints: list[Endpoint]) -> list[Loss]:
        """Sweeps: what this driver's live endpoints of the store need in this network
        namespace and do not have (read-only)."""
        return []

    def restore(self, store_id: str, endpoints: list[Endpoint],
                node_lock: Callable[[str], ContextManager[None]]) -> list[Loss]:
        """Put back all that losses() finds (adding only: nothing present is removed or
        replaced); the caller holds the store's write lock and read `endpoints` under it.
        Returns what was put back."""
        return []

