"""The bridge driver: endpoint = veth pair, host end a port of the network's bridge.

ADD: create_endpoint reserves addresses (IPAM) and records what DEL needs;
join builds bridge, veth, addresses, routes, gateway and nftables entries and
undoes its own steps if one fails. DEL: leave removes the veth (its host end is
named from the endpoint id, so no netns is needed), delete_endpoint removes our
nftables elements by value and releases the lease from the recorded IPAM call.
"""

from __future__ import annotations

import ipaddress
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

from ...cni.errors import CHECK_FAILED, CONFLICT, PLUGIN_FAILURE, CNIError
from ...cni.request import Request
from ...cni.result import DNS, Interface, IPConfig, Result, Route
from ...cni.log import message
from ...cnm.model import Endpoint, owner_tag
from ...faults import crash_point
from ...linux import addr, bridge, conntrack, links, rtnl, sysctl, veth
from ..base import RESUMED_KEY, Context, Driver
from . import config as bridge_config
from . import firewall, health, ipam, localnet, ports, shared, standby, sweep
from .check import verify
from .endpoint import addresses, container_note, expected_elements, host_veth_name, recorded_elements, route_gateway
from ..kernel_errors import kernel_errors

IPV6_MIN_MTU = 1280  # a link with a smaller MTU has no IPv6 state at all
FAULT_ENV = "CNM_FAULT"  # tests only: see cni_plugins/faults.py


def _fault(env, command: str, step: str) -> None:
    if FAULT_ENV in env:  # one dict lookup when unset
        crash_point(env, command, step)


@dataclass
class AddPlan:
    """One ADD's plan (ctx.plan), computed once by plan(): the parsed config and the requested
    port mappings; create_endpoint() adds what the kernel holds of those ports, for join()."""

    conf: bridge_config.BridgeConfig
    mappings: list
    held: set = field(default_factory=set)  # slots a sibling publishes: recorded, not installed
    stale: bool = False  # our own elements of a lost record are there: join replaces them


class BridgeDriver(Driver):
    name = "bridge"
    uses_host_netns = False
    # leave() deletes the veth, delete_endpoint() removes nftables elements and the lease:
    # independent, and each waits for the kernel (controller._overlapped).
    leave_overlaps_delete = True

    # ---- config ---------------------------------------------------------------------------
    def network_options(self, request: Request) -> dict:
        conf = bridge_config.load(request)
        if request.command == "ADD":
            bridge_config.requested_mac(request)  # refuse a bad MAC before anything changes
            ports.requested(request, conf.hostBindingIP)  # and bad portMappings
        return {"bridge": conf.bridge}

    # ---- ADD ------------------------------------------------------------------------------
    def plan(self, ctx: Context, network, endpoint: Endpoint) -> None:
        """What teardown needs, recorded with the intent: the host veth's name, the bridge,
        the IPAM call (DEL releases exactly what this ADD's IPAM call reserves). What the
        rest of the ADD needs goes to ctx.plan."""
        conf = bridge_config.load(ctx.request)
        ctx.plan = AddPlan(conf, ports.requested(ctx.request, conf.hostBindingIP))
        endpoint.data.update(bridge=conf.bridge, host_veth=host_veth_name(endpoint.id), partial=True)
        if conf.ipam_type:
            endpoint.data["ipam"] = ipam.record(ctx.request, conf.ipam_type)

    def create_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        conf = ctx.plan.conf
        if not conf.ipam_type:
            return
        try:
            result = ipam.add(ctx.request, conf.ipam_type)
        except BaseException:
            # The spec says DEL after a failed IPAM ADD too; but an ADD that failed because the
            # attachment holds a lease already (another store's endpoint of the same network,
            # container and ifname) would then free that one. IPAMs that undo their own failed
            # ADD (all or nothing) get no DEL.
            if not ipam.undoes_failed_add(conf.ipam_type):
                self._release_quietly(ctx, endpoint)
            raise
        try:
            ips, routes = ipam.addressing(result, conf.is_gateway, conf.isDefaultGateway)
        except BaseException:
            self._release_quietly(ctx, endpoint)  # (the spec: DEL after an unusable result)
            raise
        endpoint.data["ips"] = [ip.model_dump(exclude_none=True) for ip in ips]
        endpoint.data["routes"] = [r.model_dump(exclude_none=True) for r in routes]
        endpoint.data["ipam_dns"] = result.dns.model_dump()
        try:
            self._ports_free(ctx, ctx.plan, endpoint)  # early: refused before any kernel change
        except BaseException:
            self._release_quietly(ctx, endpoint)
            raise
        _fault(ctx.env, "add", "ipam")

    def _ports_free(self, ctx: Context, plan: AddPlan, endpoint: Endpoint) -> None:
        """Refuse host ports another container publishes, before any kernel change; note in
        `plan` the ones this container already publishes on another network (join leaves them)."""
        plan.held = set()
        if not plan.mappings:
            return
        siblings = frozenset(p.id for p in ctx.peers if p.container_id == endpoint.container_id)
        with kernel_errors("read the published ports"):
            claim = ports.ensure_free(plan.mappings, addresses(endpoint.data.get("ips", [])), ctx.owner(endpoint),
                                      siblings, _same_container(ctx, endpoint))
        if claim.stale:  # our own leftovers (a record lost in a crash): the ADD replaces them
            plan.stale = True
        plan.held = claim.held
        endpoint.data[ports.PUBLISHED_AT] = time.time_ns()  # orders a handover between siblings

    def join(self, ctx: Context, network, endpoint: Endpoint, sandbox) -> Result:
        request = ctx.request
        plan = ctx.plan
        conf = plan.conf
        # Chosen here unless requested (random, locally administered, as the kernel would),
        # so the container end need not be looked up after its creation.
        mac = bridge_config.requested_mac(request) or bridge_config.random_mac()
        ips = [IPConfig(**d) for d in endpoint.data.get("ips", [])]
        routes = [Route(**d) for d in endpoint.data.get("routes", [])]
        host_name = endpoint.data["host_veth"]
        undo = ExitStack()
        try:
            with links.rtnl() as ipr, links.rtnl(ctx.netns_fd) as cipr:
                br = self._bridge(ipr, conf)
                # A published port reached from its own container: with br_netfilter on, the
                # DNAT happens at the bridge and the frame goes back out the port it came from.
                publishes = bool(ips) and bool(plan.mappings)
                hairpin = conf.hairpinMode or (publishes and not conf.promiscMode)
                # The host end comes up only after its IPv6 is off and its port flags and VLANs are set.
                host_index, host_mac, container_index = self._veth(ipr, cipr, ctx, conf, endpoint, host_name, mac, br["index"], undo)
                _fault(ctx.env, "add", "veth")
                self._container_side(cipr, ctx, conf, ips, routes, container_index)
                _fault(ctx.env, "add", "addresses")
                if ips and conf.is_gateway:
                    self._gateway(ipr, conf, br, ips)
                # Last: a port coming up sets off kernel work (the bridge's port states, carrier
                # in the container) that holds RTNL, and would delay any request after it.
                self._host_side(ipr, conf, host_name, host_index, br["index"], hairpin, ctx.owner(endpoint))
                elements = expected_elements(conf, request, endpoint.data, host_name, mac)
                if elements:
                    from ...linux import nft

                    owner = ctx.owner(endpoint)
                    publishes_ports = any(ports.is_port(e) for e in elements)
                    self._route_localnet(ctx, conf, ctx.owner(endpoint), elements, undo)
                    with ctx.locked("ports") if publishes_ports else nullcontext():
                        if publishes_ports:  # again, now that no other ADD can publish meanwhile
                            self._ports_free(ctx, plan, endpoint)
                        # A port a sibling publishes stays its own; this endpoint's element is
                        # only recorded, for the handover when the sibling goes (ports.release),
                        # and enlisted, for a sibling's store that cannot read that record.
                        held = plan.held
                        installed = ports.installable(elements, held)
                        with kernel_errors("program nftables"):
                            stale = nft.owned(owner) if plan.stale else []
                            bridges = shared.touches(installed) or shared.touches(stale)
                            with ctx.locked(shared.LOCK) if bridges else nullcontext():
                                nft.commit(add=installed, remove=shared.own(stale), owner=owner,
                                           live=_live_state(ctx))
                                if shared.touches(stale):
                                    shared.settle(shared.bridges_of(stale))
                        undo.callback(_remove_elements, installed, owner, (), ctx.locked)
                        if held:
                            waits = [e for e in elements if ports.is_port(e) and ports.slot(e) in held]
                            with kernel_errors("enlist the published ports a sibling holds"):
                                undo.callback(_withdraw, ctx, owner)
                                standby.enlist(ctx.env, owner, container_note(endpoint.container_id),
                                               endpoint.data[ports.PUBLISHED_AT], waits)
                    endpoint.data["nft"] = [[e.family, e.set, e.key, e.data, e.note] for e in elements]
                    _flush_udp(ctx, installed)
                _fault(ctx.env, "add", "nft")
                bridge_mac = br.get_attr("IFLA_ADDRESS")
        except BaseException:
            _unwind(undo)
            raise
        undo.pop_all()
        endpoint.data["mac"] = mac
        endpoint.data.pop("partial", None)
        dns = DNS(**endpoint.data.get("ipam_dns", {}))
        if conf.dns is not None and conf.dns.is_set():
            dns = DNS(**conf.dns.model_dump(exclude_none=True))
        return Result(
            interfaces=[
                Interface(name=conf.bridge, mac=bridge_mac),
                Interface(name=host_name, mac=host_mac),
                Interface(name=request.ifname, mac=mac, sandbox=request.netns),
            ],
            ips=ips,
            routes=routes,
            dns=dns,
        )

    def name_server_addresses(self, ctx: Context, network, endpoint: Endpoint) -> list[tuple[str, str]]:
        """The gateway of each family, on the bridge (only when the bridge is the gateway)."""
        conf = ctx.plan.conf if isinstance(ctx.plan, AddPlan) else bridge_config.load(ctx.request)
        if not conf.is_gateway:
            return []
        found = []
        for ip in endpoint.data.get("ips", []):
            gateway = ip.get("gateway")
            if gateway and all(gateway != g for g, _ in found):
                found.append((gateway, endpoint.data["bridge"]))
        return found

    def _bridge(self, ipr, conf):
        with kernel_errors(f"create bridge {conf.bridge!r}"):
            return bridge.ensure_bridge(ipr, conf.bridge, conf.mtu, conf.promiscMode, conf.vlan_filtering)

    def _veth(self, ipr, cipr, ctx, conf, endpoint, host_name, mac, bridge_index: int, undo) -> tuple[int, str, int]:
        """The pair, its host end a port of the bridge from the start (down: _host_side brings it up);
        return the host end's index and MAC and the container end's index. Which name is taken
        is looked up only when the kernel refuses: the container's ifname (a CONFLICT, whatever
        else is wrong), else a host end of this very endpoint left by an ADD that died (tagged
        with its owner, or untagged: replaced), else another's host end (another store's endpoint of the same
        network, container and ifname; or not ours at all): a CONFLICT, it is left alone."""
        request = ctx.request
        with kernel_errors(f"create veth pair {host_name}/{request.ifname}"):
            try:
                veth.create_pair(ipr, host_name, request.ifname, ctx.netns_fd, conf.mtu, mac, bridge_index)
            except veth.BridgeFull:
                raise CNIError(
                    PLUGIN_FAILURE,
                    f"bridge {conf.bridge!r} is full: a Linux bridge holds at most {veth.BRIDGE_MAX_PORTS} ports",
                    f"{conf.bridge} has {veth.BRIDGE_MAX_PORTS} ports, the kernel's limit; put further containers "
                    f"on another network (another bridge)",
                ) from None
            except veth.VethError as exc:
                if links.link_index(cipr, request.ifname) is not None:
                    raise CNIError(
                        CONFLICT,
                        f"container veth name provided ({request.ifname}) already exists",
                        f"{request.ifname} exists in {request.netns}",
                    ) from None
                if not isinstance(exc, veth.VethExists):
                    raise
                holder = veth.alias(ipr, host_name)  # untagged: an older version's, or an ADD that died early
                if holder is not None and holder != ctx.owner(endpoint):
                    raise CNIError(
                        CONFLICT,
                        f"host veth name {host_name} is taken",
                        f"{host_name} belongs to {holder or 'an interface that is not tagged as ours'}, not to "
                        f"endpoint {ctx.owner(endpoint)}: is this network, container and ifname attached through "
                        f"another CNM store (stateDir)?",
                    ) from None
                veth.delete(ipr, host_name)
                veth.create_pair(ipr, host_name, request.ifname, ctx.netns_fd, conf.mtu, mac, bridge_index)
            undo.callback(_delete_link, host_name)
            try:
                return (links.ioctl_index(ipr, host_name), links.ioctl_mac(ipr, host_name),
                        links.ioctl_index(cipr, request.ifname))
            except OSError:
                raise veth.VethError(f"veth {host_name}/{request.ifname} vanished right after creation") from None

    def _container_side(self, cipr, ctx, conf, ips, routes, index: int) -> None:
        """DAD off (unless enabledad) before any IPv6 address, link up with arp_notify, addresses, routes."""
        ifname = ctx.request.ifname
        with kernel_errors(f"configure {ifname} in {ctx.request.netns}"):
            families = {ip.family for ip in ips}
            if 6 in families:  # IPv6 devconf has no netlink setter
                if conf.enabledad:
                    dad = [(f"ipv6/conf/{ifname}/enhanced_dad", "1"), (f"ipv6/conf/{ifname}/accept_dad", "1")]
                else:
                    dad = [(f"ipv6/conf/{ifname}/accept_dad", "0")]
                sysctl.try_write_all(dad, ctx.netns_fd)
            # Gratuitous ARP when the link comes up or changes its MAC, as the reference plugin sets.
            # An IPv4-only endpoint gets no IPv6 link-local address (see _ipv6_addr_gen_mode).
            cipr.set_link(index, up=None if conf.disableContainerInterface else True,
                          ipv4_conf={"arp_notify": 1} if 4 in families else None,
                          ipv6_addr_gen_mode=_ipv6_addr_gen_mode(conf, families))
            for ip in ips:
                addr.add_address(cipr, index, ip.address, nodad=not conf.enabledad)
            for route in routes:
                addr.add_route(cipr, index, route.dst, route_gateway(route, ips), priority=route.priority)

    def _host_side(self, ipr, conf, host_name: str, host_index: int, bridge_index: int, hairpin: bool,
                   owner: str) -> None:
        """The host end (a port already, still down): no IPv6, port flags and VLANs, then up.

        A bridge port is a layer-2 port and needs no IPv6 of its own. With it, every new port
        gets a link-local address, fe80::/64 and ff00::/8 routes beside those of every other
        port, DAD and MLD on the bridge: ~5 ms of kernel work per ADD (and DEL) with 1,000
        pods on the node, growing with them. (Best effort: a kernel without IPv6 has no knob.)"""
        with kernel_errors(f"attach the host veth to bridge {conf.bridge!r}"):
            sysctl.try_write_under("ipv6/conf", [(f"{host_name}/disable_ipv6", "1")])
            bridge.set_port_flags(ipr, host_index, bridge_index, hairpin=hairpin, isolated=conf.portIsolation)
            if conf.vlan_filtering:
                bridge.set_port_vlans(
                    ipr, host_index, access=conf.vlan, trunk=conf.trunk_vlans(), keep_default=conf.preserveDefaultVlan
                )
            # Up, and tagged with its owner (the alias proves to a sweep whose veth it is).
            ipr.set_link(host_index, up=True, ifalias=owner)

    def _gateway(self, ipr, conf, br, ips: list[IPConfig]) -> None:
        """Gateway addresses on the bridge (forceAddress replaces a different one) and forwarding on.

        With `vlan` the bridge itself joins that VLAN untagged (the reference plugin adds a
        `<bridge>.<vlan>` veth for this instead; the result then lists no 4th interface)."""
        families = set()
        with kernel_errors(f"set the gateway address on bridge {conf.bridge!r}"):
            if conf.vlan:
                bridge.set_self_vlan(conf.bridge, conf.vlan)
            for ip in ips:
                if not ip.gateway:
                    continue
                net = ipaddress.ip_interface(ip.address).network
                wanted = f"{ip.gateway}/{net.prefixlen}"
                families.add(ip.family)
                # Steady state: the gateway is there and nothing else is read: the bridge's
                # primary IPv4 address by ioctl (ipr is of this thread's netns), else an add
                # that finds it (EEXIST). A dump of the bridge's addresses lists every address
                # of the netns (the kernel does not filter by link): ~10 ms per ADD with a few
                # hundred pods on the node.
                if ip.family == 4 and addr.primary_ipv4(conf.bridge) == wanted:
                    continue
                if not addr.add_address(ipr, br["index"], wanted, nodad=True):
                    continue
                # Newly added: another address of the family may be in its way (forceAddress).
                for existing in addr.addresses(ipr, br["index"], ip.family):
                    if existing == wanted:
                        continue
                    other = ipaddress.ip_interface(existing)
                    gw = ipaddress.ip_interface(wanted)
                    if ip.family == 4 or other.ip in gw.network or gw.ip in other.network:
                        if not conf.forceAddress:
                            addr.del_address(ipr, br["index"], wanted)  # leave the bridge as it was
                            raise CNIError(
                                PLUGIN_FAILURE,
                                "failed to set bridge addr",
                                f"{conf.bridge!r} already has an IP address different from {wanted}",
                            )
                        addr.del_address(ipr, br["index"], existing)
                        # removing a subnet's primary address removes its secondaries too
                        addr.add_address(ipr, br["index"], wanted, nodad=True)
            if 4 in families:
                sysctl.ensure("net/ipv4/ip_forward", "1")
            if 6 in families:
                sysctl.ensure("net/ipv6/conf/all/forwarding", "1")

    def _route_localnet(self, ctx: Context, conf, owner: str, elements, undo: ExitStack) -> None:
        """127.0.0.1:hostPort from the host: DNAT in output re-routes the packet to the
        bridge, which the kernel allows for a 127/8 source only with route_localnet; on
        only while an endpoint needs it (localnet.py)."""
        if not localnet.needed_by(elements):
            return
        with kernel_errors(f"enable route_localnet on {conf.bridge!r}"), ctx.locked("localnet"):
            localnet.acquire(ctx.env, conf.bridge, owner)
        undo.callback(_release_localnet, ctx, owner, conf.bridge)

    # ---- DEL ------------------------------------------------------------------------------
    def leave(self, ctx: Context, network, endpoint: Endpoint, sandbox) -> None:
        """Deleting the host end removes the pair, wherever the container end is; only when it
        is not another owner's (another store's endpoint of the same network, container and
        ifname has the same name; an ADD may have stopped because of it)."""
        name = endpoint.data.get("host_veth") or host_veth_name(endpoint.id)
        with kernel_errors("delete the host veth"):
            _delete_link_unless_owned_by_another(name, ctx.owner(endpoint))
        _fault(ctx.env, "del", "veth")

    def delete_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        recorded = recorded_elements(endpoint)
        resumed = endpoint.data.get("partial") or endpoint.data.get(RESUMED_KEY)
        if resumed:  # only what the kernel still tags as its own (another may hold its keys by now)
            recorded = _owned_quietly(ctx.owner(endpoint))
        # (an ADD that stopped half-way may have enlisted ports it never installed)
        publishes = endpoint.data.get("partial") or any(ports.is_port(e) for e in recorded)
        if recorded or publishes:
            with kernel_errors("remove nftables entries"):
                with ctx.locked("ports") if publishes else nullcontext():
                    remove = _release(ctx, endpoint, recorded, publishes)
                _flush_udp(ctx, remove)
            if localnet.needed_by(recorded):
                with kernel_errors("restore route_localnet"):
                    _release_localnet(ctx, ctx.owner(endpoint), endpoint.data.get("bridge"))
        _fault(ctx.env, "del", "nft")
        rec = endpoint.data.get("ipam")
        if rec:
            ipam.release_recorded(rec, ctx.request)
        _fault(ctx.env, "del", "ipam")

    def delete_unrecorded(self, ctx: Context, endpoint_id: str) -> None:
        """DEL with no record (never added, repeated, or lost): converge anyway, touching
        only what is not another store's (a veth tagged with another owner stays)."""
        from ...linux import nft

        owner = owner_tag(ctx.store_id, endpoint_id) if ctx.store_id else endpoint_id
        with kernel_errors("delete the host veth"):
            holder = _delete_link_unless_owned_by_another(host_veth_name(endpoint_id), owner)
        # Another store's endpoint of this very network, container and ifname is live: the
        # IPAM's lease for the attachment is its (a shared dataDir cannot tell them apart).
        elsewhere = holder is not None and holder.split("@")[0] == endpoint_id
        with kernel_errors("remove nftables entries"):
            owned = nft.owned(owner) + nft.owned(endpoint_id)  # ours, and an older version's untagged
            if owned:
                _remove_elements(owned, owner, (), ctx.locked, _live_state(ctx))
                _flush_udp(ctx, owned)
        with kernel_errors("restore route_localnet"):
            _release_localnet(ctx, owner, None)  # (its bridge is not known without a record)
        ipam_conf = ctx.request.config.get("ipam")
        ipam_type = ipam_conf.get("type") if isinstance(ipam_conf, dict) else None
        if isinstance(ipam_type, str) and ipam_type and not elsewhere:
            ipam.delegate("DEL", ctx.request, ipam_type)

    def _release_quietly(self, ctx: Context, endpoint: Endpoint) -> None:
        try:
            ipam.release_recorded(endpoint.data["ipam"], ctx.request)
        except Exception:
            pass

    # ---- CHECK / STATUS / GC --------------------------------------------------------------
    def check(self, ctx: Context, network, endpoint: Endpoint, sandbox, prev: Result | None) -> None:
        if prev is None:
            raise CNIError(CHECK_FAILED, "Required prevResult missing")
        conf = bridge_config.load(ctx.request)
        if conf.ipam_type:
            ipam.delegate("CHECK", ctx.request, conf.ipam_type)
        verify(ctx, conf, endpoint, prev)

    def status(self, request: Request) -> None:
        conf = bridge_config.load(request)
        health.require_nft(conf, request)
        if conf.ipam_type:
            # Delegated only to an IPAM that knows STATUS, i.e. speaks 1.1.0; one that does not
            # cannot serve an ADD of this (1.1.0) config either, which require_version says.
            ipam.require_version(request, conf.ipam_type)
            ipam.delegate("STATUS", request, conf.ipam_type)

    def degraded(self, request: Request, endpoints) -> str | None:
        """STATUS 51: what existing endpoints of this network have lost (None: nothing)."""
        return health.missing_rules(list(endpoints), recorded_elements)

    def gc(self, request: Request, valid, remaining) -> None:
        """Forward GC to the IPAM if it knows GC; our own endpoints were collected by the
        controller. The leases of endpoints that stay (a kept endpoint's address is still the
        shared stack's, though its container is gone from the runtime's list) are added to the
        list the IPAM gets."""
        conf = bridge_config.load(request)
        if conf.ipam_type and ipam.speaks_status(request, conf.ipam_type):
            ipam.gc(request, conf.ipam_type, valid | ipam.held_by(remaining))

    def orphans(self, ctx: Context, endpoints) -> list:
        return sweep.orphans(ctx, endpoints)

    def remove_orphan(self, ctx: Context, orphan) -> None:
        sweep.remove(ctx, orphan)

    def losses(self, store_id: str, endpoints) -> list:
        return firewall.losses(store_id, endpoints)

    def restore(self, store_id: str, endpoints, node_lock) -> list:
        return firewall.restore(store_id, endpoints, node_lock)


def _ipv6_addr_gen_mode(conf, families: set[int]) -> int | None:
    """No IPv6 link-local address for the container end of an IPv4-only endpoint (as Docker,
    which disables IPv6 there): otherwise, when it comes up, its DAD, router solicitations and
    MLD reports go to multicast groups the bridge floods to every other port, i.e. through
    every other pod's stack: ~1,000 deliveries per frame on a node with 1,000 pods. IPv6 stays
    enabled (an address added later works); `ipv6LinkLocal: true` keeps the kernel's default.
    None (unchanged) when the endpoint has IPv6 or no address at all (no IPAM: its addressing,
    SLAAC included, is someone else's), or the link has no IPv6 state to set: the kernel has
    no IPv6, or the MTU is below IPv6's minimum (then the kernel refuses the set)."""
    if conf.ipv6LinkLocal or families != {4} or not rtnl.kernel_has_ipv6():
        return None
    if conf.mtu and conf.mtu < IPV6_MIN_MTU:
        return None
    return rtnl.IN6_ADDR_GEN_MODE_NONE


def _flush_udp(ctx: Context, elements) -> None:
    """UDP conntrack entries of the published ports in `elements` (ADD: flows that began
    before the port was published; DEL: flows still steered to the gone container).
    Best effort: a failure is logged, never the command's (a DEL must not stick on it)."""
    from ...linux import nft

    done = set()
    for e in elements:
        if e.set in ("ports4_addr", "ports6_addr", "ports4_any_addr", "ports6_any_addr"):
            proto, _, port = nft.binding_of(e)
            wanted = (port, 4 if e.set.startswith("ports4") else 6)
            if proto == "udp" and wanted not in done:
                done.add(wanted)
                try:
                    conntrack.flush_udp_port(*wanted)
                except conntrack.ConntrackError as exc:
                    message(ctx.env, ctx.request.config, "error", f"UDP conntrack entries not flushed: {exc}",
                            command=ctx.request.command, container=ctx.request.container_id)


def _delete_link(name: str) -> None:
    with links.rtnl() as ipr:
        veth.delete(ipr, name)


def _delete_link_unless_owned_by_another(name: str, owner: str) -> str | None:
    """Delete link `name` unless its alias names another owner (a veth without an alias:
    made by an older version, or by an ADD that stopped before tagging it); return that
    other owner when it stays."""
    with links.rtnl() as ipr:
        alias = veth.alias(ipr, name)
        if alias is not None and alias != owner:
            return alias
        veth.delete(ipr, name)
    return None


def _release_localnet(ctx: Context, owner: str, bridge: str | None) -> None:
    with ctx.locked("localnet"):  # acquire and release of one bridge must not interleave
        localnet.release(ctx.env, owner, bridge)


def _owned_quietly(owner: str) -> list:
    """The elements tagged `owner`; none when nftables cannot be read (what is left is
    tagged, and a sweep finds it later)."""
    from ...linux import nft

    try:
        return nft.owned(owner)
    except nft.NftError:
        return []


def _release(ctx: Context, endpoint: Endpoint, recorded: list, publishes: bool) -> list:
    """Remove the endpoint's elements, handing each published port it frees to the
    earliest-published endpoint of the same container that waits for it: a sibling of this
    store (its record) or of another store (enlisted, standby.py); returns what it removed.
    Removal by value clashes (NftExists) with a key another endpoint holds (this one
    waited for it, or another store put its own back after a flush): then only the
    published ports the kernel says are this endpoint's are removed."""
    from ...linux import nft

    owner = ctx.owner(endpoint)
    waited = bool(publishes) and standby.withdraw(ctx.env, owner)
    enlisted = {}
    if publishes:
        gone = {ctx.owner(p) for p in ctx.peers if not p.active}  # its container sent DEL: it takes nothing
        enlisted = {e.owner: e for e in standby.waiting(ctx.env, container_note(endpoint.container_id))
                    if e.owner not in gone}
    heirs = [ports.Heir(e.owner, (e.published_at, "", e.owner), e.elements) for e in enlisted.values()]
    heirs += [h for h in _siblings(ctx, endpoint) if h.owner not in enlisted]  # (recorded by an older build)
    for shared_keys in (waited, True):
        remove, handover = ports.release(recorded, owner, heirs, shared=shared_keys)
        try:
            if remove or handover:  # (a half-done ADD may have enlisted, and installed nothing)
                _remove_elements(remove, owner, [(heir.owner, els) for heir, els in handover], ctx.locked,
                                 _live_state(ctx))
        except nft.NftExists:
            if shared_keys:
                raise
            continue
        for heir, els in handover:
            if heir.owner in enlisted:
                standby.took(ctx.env, enlisted[heir.owner], els)
        return remove
    return []


def _siblings(ctx: Context, endpoint: Endpoint) -> list:
    """The active endpoints of the container in this store, as heirs of its published ports."""
    return [ports.Heir(ctx.owner(p), (p.data.get(ports.PUBLISHED_AT, 0), p.ifname, p.id),
                       [e for e in recorded_elements(p) if ports.is_port(e)])
            for p in ctx.peers if p.id != endpoint.id and p.container_id == endpoint.container_id and p.active]


def _withdraw(ctx: Context, owner: str) -> None:
    with ctx.locked("ports"):
        standby.withdraw(ctx.env, owner)


def _same_container(ctx: Context, endpoint: Endpoint):
    """ports.ensure_free's test for an element of another store: its comment names this
    container (as expected_elements writes it) and the address it leads to is in this ADD's
    network namespace (the container id is the runtime's word, the address the kernel's).
    The namespace's addresses are read once, and only when asked."""
    note = container_note(endpoint.container_id)
    found: list[set] = []

    def same(container: str, address) -> bool:
        if container != note or ctx.netns_fd is None:
            return False
        if not found:
            with links.rtnl(ctx.netns_fd) as cipr:
                found.append({ipaddress.ip_address(a) for _, a, _, _ in links.addresses(cipr) if a})
        try:
            return ipaddress.ip_address(str(address)) in found[0]
        except ValueError:
            return False

    return same


def _remove_elements(elements, owner: str, handover=(), locked=None, live=None) -> None:
    """Remove `elements`; in the same transaction the first heir installs the published
    ports it takes over (so the port never goes unanswered), further heirs after it.
    Elements a bridge's endpoints share are left to shared.settle (under `locked`(LOCK)).
    (`live`: see _live_state.)"""
    if shared.touches(elements):
        with locked(shared.LOCK) if locked is not None else nullcontext():
            _remove_own_elements(shared.own(elements), owner, handover, live)
            shared.settle(shared.bridges_of(elements))
        return
    _remove_own_elements(elements, owner, handover, live)


def _remove_own_elements(elements, owner: str, handover=(), live=None) -> None:
    from ...linux import nft

    if not handover:
        nft.commit(remove=elements, owner=owner, live=live)
        return
    # The removal's add-then-delete writes the heir's name into a comment that is deleted
    # at once: which owner commit() is given only matters for the elements it adds.
    (heir, taken), *more = handover
    nft.commit(add=taken, remove=elements, owner=heir, live=live)
    for heir, taken in more:
        nft.commit(add=taken, owner=heir, live=live)


def _live_state(ctx: Context):
    """For nft.commit: what the store's live endpoints need, should the commit find our
    tables gone (a flushed ruleset takes every endpoint's elements, not only this one's).
    Called only then: the common commit reads nothing."""
    if ctx.live_endpoints is None:
        return None

    def live():
        return firewall.expected_state(ctx.store_id, ctx.live_endpoints())

    return live


def _unwind(stack: ExitStack) -> None:
    try:
        stack.close()
    except Exception:
        pass
