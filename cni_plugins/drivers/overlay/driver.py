"""The overlay driver (cnm-overlay): a VXLAN overlay whose shared state, one subnet lease per
node, lives in etcd.

Per node and network: a bridge holding the gateway of the node's leased subnet, and a VXLAN
device routing to the other nodes' subnets (mesh.py). Containers attach exactly as on
cnm-bridge: every endpoint operation is the bridge driver's, given a bridge config made from
this one (the bridge named from the network, the gateway and default route on it, cnm-ipam
on the leased subnet, the shared keys passed through). ipMasq spares the whole cluster subnet:
pod to pod keeps its source address across nodes.

ADD reads the lease from the node's state file; only when no helper keeps it fresh does it
claim the lease and program the mesh itself (one etcd round trip per stale ADD). DEL never
needs etcd. Names (`dnsEnabled`) are recorded in the node's store as on cnm-bridge; the
resident helper publishes them to etcd and learns the other nodes' (namerecords.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

from ...cni.errors import INVALID_CONFIG, NOT_AVAILABLE, PLUGIN_FAILURE, TRY_AGAIN_LATER, CNIError
from ...cni.request import Request
from ...cnm.model import Endpoint
from ...cnm.store import state_dir
from ..base import Context, Driver
from ..bridge import BridgeDriver
from ..bridge.endpoint import MASQUERADE_EXCEPT
from . import config, state

BRIDGE_REQUEST_KEY = "overlayBridge"  # endpoint.data: the bridge config this endpoint was added with
# Keys of the request's config a bridge request keeps as they are (the runtime's and the protocol's).
PASSED = ("cniVersion", "name", "runtimeConfig", "capabilities", "prevResult", "args", "stateDir",
          "cni.dev/attachments", "cni.dev/valid-attachments")


class OverlayDriver(Driver):
    name = "overlay"
    leave_overlaps_delete = True
    _bridge = BridgeDriver()  # keeps nothing between calls: one serves every request

    # ---- config -------------------------------------------------------------------------
    def network_options(self, request: Request) -> dict:
        from .mesh import device_names

        conf = config.load(request)
        placeholder = {"subnet": str(next(conf.network.subnets(new_prefix=conf.hostSubnetLength))), "mtu": 0}
        self._bridge.network_options(bridge_request(request, conf, placeholder))
        bridge, vxlan = device_names(conf.name)
        return {"bridge": bridge, "vxlan": vxlan, "subnet": conf.subnet, "vni": conf.vni}

    # ---- ADD ----------------------------------------------------------------------------
    def plan(self, ctx: Context, network, endpoint: Endpoint) -> None:
        conf = config.load(ctx.request)
        held = node_lease(ctx.request, conf)
        breq = bridge_request(ctx.request, conf, held)
        endpoint.data[BRIDGE_REQUEST_KEY] = breq.stdin.decode()
        endpoint.data[MASQUERADE_EXCEPT] = conf.subnet
        endpoint.data["overlay"] = {"subnet": held["subnet"], "node": held.get("node", "")}
        bctx = _as_bridge(ctx, breq)
        self._bridge.plan(bctx, network, endpoint)
        ctx.plan = bctx.plan  # the bridge's ADD plan, for create_endpoint and join (_as_bridge copies it)

    def create_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        self._bridge.create_endpoint(_as_bridge(ctx, _recorded(ctx.request, endpoint)), network, endpoint)

    def join(self, ctx: Context, network, endpoint: Endpoint, sandbox):
        return self._bridge.join(_as_bridge(ctx, _recorded(ctx.request, endpoint)), network, endpoint, sandbox)

    def name_server_addresses(self, ctx: Context, network, endpoint: Endpoint) -> list[tuple[str, str]]:
        """The node's gateway on the network's bridge, as on cnm-bridge (the names of the other
        nodes' pods come from etcd through the resident helper: drivers/overlay/namerecords.py)."""
        return self._bridge.name_server_addresses(_as_bridge(ctx, _recorded(ctx.request, endpoint)), network,
                                                  endpoint)

    # ---- DEL (never etcd) -----------------------------------------------------------------
    def leave(self, ctx: Context, network, endpoint: Endpoint, sandbox) -> None:
        self._bridge.leave(ctx, network, endpoint, sandbox)

    def delete_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        self._bridge.delete_endpoint(ctx, network, endpoint)

    def delete_unrecorded(self, ctx: Context, endpoint_id: str) -> None:
        """With the node's lease known, the IPAM's reservation (if any) is released too."""
        held = _cached(ctx.request)
        if held is not None:
            try:
                conf = config.load(ctx.request)
            except CNIError:
                conf = None
            if conf is not None:
                ctx = _as_bridge(ctx, bridge_request(ctx.request, conf, held))
        self._bridge.delete_unrecorded(ctx, endpoint_id)

    # ---- CHECK / STATUS / GC ----------------------------------------------------------------
    def check(self, ctx: Context, network, endpoint: Endpoint, sandbox, prev) -> None:
        self._bridge.check(_as_bridge(ctx, _recorded(ctx.request, endpoint)), network, endpoint, sandbox, prev)

    def status(self, request: Request) -> None:
        """50 when no ADD can succeed: no lease on this node and none to be had (etcd
        unreachable, the subnet exhausted)."""
        from . import etcd, lease, mesh

        conf = config.load(request)
        held = _cached(request)
        if held is None:
            settings = mesh.settings_of(conf)
            try:
                records, _, _ = lease.read_all(mesh.client_of(settings, timeout=2), mesh.layout_of(settings))
            except etcd.EtcdError as exc:
                raise CNIError(NOT_AVAILABLE, f"network {conf.name}: no subnet lease on this node and etcd "
                                              f"is unreachable", str(exc)) from None
            node = _node(conf)
            layout = mesh.layout_of(settings)
            if not any(r.node == node for r in records) and len(records) >= layout.count():
                raise CNIError(NOT_AVAILABLE, f"network {conf.name}: subnet {conf.subnet} is exhausted",
                               f"every /{conf.hostSubnetLength} is held by another node")
            held = {"subnet": str(next(conf.network.subnets(new_prefix=conf.hostSubnetLength))), "mtu": 0}
        self._bridge.status(bridge_request(request, conf, held))

    def degraded(self, request: Request, endpoints) -> str | None:
        """51: etcd unreachable (the mesh cannot follow the other nodes), or what the bridge's
        endpoints lost."""
        from . import etcd, mesh

        conf = config.load(request)
        try:
            mesh.client_of(mesh.settings_of(conf), timeout=2).range(b"/")
        except etcd.EtcdError as exc:
            return f"etcd unreachable: the mesh cannot follow other nodes' leases ({exc})"
        return self._bridge.degraded(request, endpoints)

    def orphans(self, ctx: Context, endpoints) -> list:
        """VXLAN devices of this store (their alias) on a network it no longer holds a lease on
        (its state file gone): removable, and their routes, neighbour and FDB entries go with
        them. Another store's are reported only."""
        from ...cnm.model import STORE_TAG_LEN
        from ..base import Orphan
        from .mesh import parse_alias

        directory = state_dir(None, ctx.env)
        tag = ctx.store_id[:STORE_TAG_LEN]
        found = []
        for name, alias in _vxlan_devices():
            owner = parse_alias(alias)
            if owner is None:
                continue
            store_tag, network = owner
            if store_tag != tag:
                found.append(Orphan("vxlan", name, f"VXLAN device of overlay network {network} of another store",
                                    removable=False))
            elif state.read(directory, network) is None:
                found.append(Orphan("vxlan", name, f"VXLAN device of overlay network {network}, on which this "
                                                   f"node holds no lease any more", removable=True,
                                    targets=[alias]))
        return found

    def remove_orphan(self, ctx: Context, orphan) -> None:
        from ...linux import links, vxlan

        with links.rtnl() as ipr:
            link = links.get_link(ipr, orphan.name)
            if link is not None and link.get_attr("IFLA_IFALIAS") == orphan.targets[0]:  # still that one
                vxlan.delete_device(ipr, orphan.name)

    def gc(self, request: Request, valid, remaining) -> None:
        held = _cached(request)
        if held is not None:
            self._bridge.gc(bridge_request(request, config.load(request), held), valid, remaining)


def node_lease(request: Request, conf: config.OverlayConfig) -> dict:
    """This node's lease on the network: the state file's while fresh, else claimed now (and
    the mesh programmed once from a fresh list); the stale file's when etcd is unreachable."""
    from . import etcd, lease, mesh

    directory = _state_dir(request)
    cached = state.read(directory, conf.name)
    settings = mesh.settings_of(conf)
    # (a lease claimed under other settings, another store, name or TTL, is never reused)
    claimed_so = cached is not None and cached.get("settings") == settings
    if claimed_so:
        if state.fresh(cached, conf.leaseTTL):
            return cached
        if state.store_down(cached, conf.leaseTTL) and not state.expired(cached):
            return cached  # still this node's subnet; the helper converges when etcd is back
    _node(conf)  # code 7 when the node has no identity
    try:
        return mesh.converge(settings, directory).data
    except lease.Exhausted as exc:
        raise CNIError(TRY_AGAIN_LATER, f"network {conf.name}: no free subnet in {conf.subnet}", str(exc)) from None
    except lease.Conflict as exc:
        raise CNIError(TRY_AGAIN_LATER, f"network {conf.name}: another machine holds this node's lease",
                       str(exc)) from None
    except mesh.MtuTooLarge as exc:
        raise CNIError(INVALID_CONFIG, "invalid mtu", str(exc)) from None
    except etcd.EtcdError as exc:
        if claimed_so and not state.expired(cached):
            return cached  # this node's subnet is still its own until its lease expires
        raise CNIError(TRY_AGAIN_LATER, f"network {conf.name}: no subnet lease on this node and etcd is "
                                        f"unreachable", str(exc)) from None
    except (mesh.SetupError, OSError, ValueError) as exc:
        raise CNIError(PLUGIN_FAILURE, f"network {conf.name}: could not set up the overlay", str(exc)) from None


def bridge_request(request: Request, conf: config.OverlayConfig, held: dict) -> Request:
    """The cnm-bridge request an overlay request amounts to on this node."""
    subnet = ipaddress.ip_network(held["subnet"])
    bridge, _ = _names(conf.name)
    bconf = {k: request.config[k] for k in PASSED if k in request.config}
    bconf.update({k: request.config[k] for k in config.BRIDGE_KEYS if k in request.config})
    bconf.update({
        "type": "cnm-bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True,
        "mtu": held.get("mtu") or 0,
        "ipam": {"type": "cnm-ipam", "dataDir": state.ipam_dir(_state_dir(request)),
                 "ranges": [[{"subnet": str(subnet), "gateway": str(subnet.network_address + 1)}]]},
    })
    stdin = json.dumps(bconf).encode()
    return request.replace(config=bconf, stdin=stdin)


def _names(network: str) -> tuple[str, str]:
    from .mesh import device_names

    return device_names(network)


def _recorded(request: Request, endpoint: Endpoint) -> Request:
    """The bridge request recorded with the endpoint's intent (the lease it was planned on)."""
    stdin = endpoint.data[BRIDGE_REQUEST_KEY].encode()
    bconf = json.loads(stdin)
    # CHECK brings a prevResult of its own: the recorded config's would be the ADD's (none).
    for key in ("prevResult", "runtimeConfig", "cni.dev/valid-attachments"):
        if key in request.config:
            bconf[key] = request.config[key]
        else:
            bconf.pop(key, None)
    stdin = json.dumps(bconf).encode()
    return request.replace(config=bconf, stdin=stdin)


def _as_bridge(ctx: Context, breq: Request) -> Context:
    return dataclasses.replace(ctx, request=breq)


def _vxlan_devices() -> list[tuple[str, str]]:
    """(name, alias) of the VXLAN devices of this network namespace."""
    from ...linux import links

    with links.rtnl() as ipr:
        found = []
        for link in ipr.iproute.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "vxlan":
                found.append((link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_IFALIAS") or ""))
        return found


def _state_dir(request: Request) -> str:
    return state_dir(request.config.get("stateDir"), request.env)


def _cached(request: Request) -> dict | None:
    name = request.config.get("name")
    if not isinstance(name, str):
        return None
    return state.read(_state_dir(request), name)


def _node(conf: config.OverlayConfig) -> str:
    from .lease import node_identity

    try:
        return node_identity(conf.nodeName)
    except ValueError as exc:
        raise CNIError(INVALID_CONFIG, "invalid nodeName", str(exc)) from None
