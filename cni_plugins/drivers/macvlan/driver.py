"""The macvlan driver: endpoint = a macvlan of the master, in the sandbox's netns.

ADD: create_endpoint reserves addresses (IPAM); join creates the macvlan on its master right
in the container's netns, named from the endpoint id, then renames it to CNI_IFNAME and tags
it with its owner in one request (a crash in between leaves a link named as this endpoint's),
then addresses, up (arp_notify: a gratuitous ARP), routes. DEL removes what is named or
tagged as the endpoint's and releases the lease from the recorded IPAM call; with the netns
or the master gone the kernel has removed the macvlan already.
"""

from __future__ import annotations

from ...cni.errors import CHECK_FAILED, NOT_AVAILABLE, PLUGIN_FAILURE, CNIError
from ...cni.request import Request
from ...cni.result import DNS, Interface, IPConfig, Result, Route
from ...cnm.model import Endpoint
from .. import delegated_ipam as ipam
from ..base import Context, Driver
from . import config as mv_config
from ..kernel_errors import kernel_errors
from .kernel import link_name, remove_links, route_gateway

FAULT_ENV = "CNM_FAULT"  # tests only: see cni_plugins/faults.py


def _fault(env, command: str, step: str) -> None:
    """The shared step names: ipam (leased), veth (the link made, named from the endpoint id),
    addresses (renamed and tagged), nft (configured); on DEL veth (links removed), nft, ipam
    (released)."""
    if FAULT_ENV in env:
        from ...faults import crash_point

        crash_point(env, command, step)


class MacvlanDriver(Driver):
    name = "macvlan"
    # leave() deletes the macvlan (the kernel takes ~20 ms to unregister a link), and
    # delete_endpoint() releases the lease: independent, overlapped.
    leave_overlaps_delete = True

    # ---- config ---------------------------------------------------------------------------
    def network_options(self, request: Request) -> dict:
        conf = mv_config.load(request)
        options = {"master": conf.master, "mode": conf.mode}
        if request.command == "ADD":
            mv_config.requested_mac(request, conf)  # refused before anything changes
            if not conf.master and not conf.linkInContainer:
                from ...linux import links
                from .kernel import default_master

                with kernel_errors("find the default route's interface"), links.rtnl() as ipr:
                    options["master"] = default_master(ipr)
        if conf.linkInContainer:
            options["linkInContainer"] = True
        return options

    # ---- ADD ------------------------------------------------------------------------------
    def plan(self, ctx: Context, network, endpoint: Endpoint) -> None:
        """What teardown needs, with the intent: the master, the mode, the link's name until it
        is tagged, the MAC (asked for, or the endpoint's own), the IPAM call."""
        conf = mv_config.load(ctx.request)
        data = endpoint.data
        data.update(master=network.options.get("master") or conf.master, mode=conf.mode, link=link_name(endpoint.id))
        if conf.linkInContainer:
            data["in_container"] = True
        mac = mv_config.requested_mac(ctx.request, conf)
        if not mac and conf.mode != "passthru":  # (passthru: the master's own MAC, by the kernel)
            mac = mv_config.endpoint_mac(endpoint.id)
        data["mac"] = mac
        if conf.ipam_type:
            data["ipam"] = ipam.record(ctx.request, conf.ipam_type)

    def create_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        conf = mv_config.load(ctx.request)
        if not conf.ipam_type:
            return
        try:
            result = ipam.add(ctx.request, conf.ipam_type)
        except BaseException:
            if not ipam.undoes_failed_add(conf.ipam_type):
                _release_quietly(ctx, endpoint)
            raise
        if not result.ips:
            _release_quietly(ctx, endpoint)
            from ...cni.errors import IPAM_FAILURE

            raise CNIError(IPAM_FAILURE, "IPAM plugin returned missing IP config")
        endpoint.data["ips"] = [IPConfig(address=ip.address, gateway=ip.gateway, interface=0)
                                .model_dump(exclude_none=True) for ip in result.ips]
        endpoint.data["routes"] = [r.model_dump(exclude_none=True) for r in result.routes]
        _fault(ctx.env, "add", "ipam")

    def join(self, ctx: Context, network, endpoint: Endpoint, sandbox) -> Result:
        from ...linux import links, macvlan
        from .kernel import create_error, default_master, usable_master

        request = ctx.request
        conf = mv_config.load(request)
        data = endpoint.data
        in_container = bool(data.get("in_container"))
        ips = [IPConfig(**d) for d in data.get("ips", [])]
        routes = [Route(**d) for d in data.get("routes", [])]
        owner = ctx.owner(endpoint)
        try:
            with links.rtnl() as ipr, links.rtnl(ctx.netns_fd) as cipr:
                where = cipr if in_container else ipr
                place = f"the container's network namespace {request.netns}" if in_container else \
                    "the host's network namespace"
                if not data.get("master"):
                    with kernel_errors(f"read the default route in {place}"):
                        data["master"] = default_master(where)

                def refused(exc) -> CNIError:
                    """Why the kernel refused: the master looked at closely only now (missing,
                    a port, a passthru macvlan, a smaller MTU: code 7), else the kernel's word."""
                    usable_master(where, data["master"], place, conf.mtu)
                    return create_error(exc, data["master"], data["mode"])

                with kernel_errors(f"create the macvlan on {data['master']!r}"):
                    try:
                        master_index = links.ioctl_index(where, data["master"])
                    except OSError as exc:
                        raise refused(exc) from None
                    self._create(where, cipr, ctx, endpoint, master_index, conf, refused)
                _fault(ctx.env, "add", "veth")
                with kernel_errors(f"name the macvlan {request.ifname} in {request.netns}"):
                    try:
                        macvlan.rename(cipr, links.ioctl_index(cipr, data["link"]), request.ifname, owner,
                                       arp_notify=bool(ips) and any(ip.family == 4 for ip in ips))
                    except macvlan.NameTaken:
                        from ...cni.errors import CONFLICT

                        raise CNIError(CONFLICT, f"container interface name provided ({request.ifname}) already "
                                                 f"exists", f"{request.ifname} exists in {request.netns}") from None
                _fault(ctx.env, "add", "addresses")
                self._configure(cipr, ctx, ips, routes)
                mac = links.ioctl_mac(cipr, request.ifname)
                mtu = links.ioctl_mtu(cipr, request.ifname)  # (the master's when unset): what CHECK expects
                _fault(ctx.env, "add", "nft")
        except BaseException:
            try:
                remove_links(endpoint.id, owner, request.ifname, ctx.netns_fd, True)
            except Exception:
                pass
            raise
        data["mac"], data["mtu"] = mac, mtu
        dns = DNS(**conf.dns.model_dump(exclude_none=True)) if conf.dns is not None else DNS()
        return Result(interfaces=[Interface(name=request.ifname, mac=mac, sandbox=request.netns)],
                      ips=ips, routes=routes, dns=dns)

    def _create(self, ipr, cipr, ctx, endpoint, master_index: int, conf, refused) -> None:
        """The macvlan, down, made by `ipr` (the master's netns) right in the container's
        netns (a move between netns would cost the kernel ~15 ms), named from the endpoint id
        until it is tagged. A link of that name left there by an ADD of this endpoint that died
        is replaced; another's is a conflict."""
        from pyroute2.netlink.exceptions import NetlinkError

        from ...cni.errors import CONFLICT
        from ...linux import macvlan

        name, data = endpoint.data["link"], endpoint.data
        netns_fd = None if ipr is cipr else ctx.netns_fd
        for attempt in (1, 2):
            try:
                return macvlan.create(ipr, name, master_index, data["mode"], netns_fd, conf.mtu, data.get("mac", ""),
                                      conf.bcqueuelen)
            except macvlan.NameTaken:
                if attempt == 2 or not macvlan.delete_if_ours(cipr, name, ctx.owner(endpoint), True):
                    raise CNIError(CONFLICT, f"link name {name} is taken",
                                   f"{name} in {ctx.request.netns} is not tagged as endpoint {ctx.owner(endpoint)}'s"
                                   ) from None
            except NetlinkError as exc:
                raise refused(exc) from None

    def _configure(self, cipr, ctx, ips: list[IPConfig], routes: list[Route]) -> None:
        """Addresses first, then up (arp_notify is on: the kernel announces the address, a
        gratuitous ARP, as the link comes up); then routes (they need the link up); then the
        wait for IPv6 DAD."""
        from ...linux import addr, links, sysctl

        ifname = ctx.request.ifname
        with kernel_errors(f"configure {ifname} in {ctx.request.netns}"):
            index = links.ioctl_index(cipr, ifname)
            families = {ip.family for ip in ips}
            if 6 in families:  # IPv6 devconf has no netlink setter; announce (NA) as the reference does
                sysctl.try_write_all([(f"ipv6/conf/{ifname}/ndisc_notify", "1")], ctx.netns_fd)
            for ip in ips:  # IPv6 with DAD: on a LAN another host may have the address
                addr.add_address(cipr, index, ip.address)
            cipr.set_link(index, up=True)
            for route in routes:
                addr.add_route(cipr, index, route.dst, route_gateway(route, ips), priority=route.priority)
            if 6 in families:
                self._settle_ipv6(cipr, index, ctx)

    @staticmethod
    def _settle_ipv6(cipr, index: int, ctx) -> None:
        """Wait for DAD as the reference plugin does (its addresses usable when ADD answers);
        an address another LAN host has is refused, never taken over."""
        from ...cni.errors import CONFLICT
        from ...linux import addr

        failed, tentative = addr.settle_ipv6(cipr, index)
        if failed:
            raise CNIError(CONFLICT, f"address {', '.join(failed)} is in use on the LAN",
                           f"IPv6 duplicate address detection on {ctx.request.ifname} failed: another node on "
                           f"the master's link has it; fix the IPAM range")
        if tentative:
            raise CNIError(PLUGIN_FAILURE, f"address {', '.join(tentative)} still tentative",
                           f"IPv6 duplicate address detection on {ctx.request.ifname} did not finish in 10 s")

    # ---- DEL ------------------------------------------------------------------------------
    def leave(self, ctx: Context, network, endpoint: Endpoint, sandbox) -> None:
        with kernel_errors("delete the macvlan"):
            remove_links(endpoint.id, ctx.owner(endpoint), endpoint.ifname, ctx.netns_fd, True)
        _fault(ctx.env, "del", "veth")

    def delete_endpoint(self, ctx: Context, network, endpoint: Endpoint) -> None:
        _fault(ctx.env, "del", "nft")
        rec = endpoint.data.get("ipam")
        if rec:
            ipam.release_recorded(rec, ctx.request)
        _fault(ctx.env, "del", "ipam")

    def delete_unrecorded(self, ctx: Context, endpoint_id: str) -> None:
        """DEL with no record: remove what is named (not yet tagged) or tagged as this
        attachment's, and ask the IPAM to release the attachment."""
        conf = mv_config.load(ctx.request)
        with kernel_errors("delete the macvlan"):
            remove_links(endpoint_id, ctx.owner_of(endpoint_id), ctx.request.ifname, ctx.netns_fd, True)
        if conf.ipam_type:
            ipam.delegate("DEL", ctx.request, conf.ipam_type)

    # ---- CHECK / STATUS / GC / sweeps -----------------------------------------------------
    def check(self, ctx: Context, network, endpoint: Endpoint, sandbox, prev: Result | None) -> None:
        if prev is None:
            raise CNIError(CHECK_FAILED, "Required prevResult missing")
        conf = mv_config.load(ctx.request)
        if conf.ipam_type:
            ipam.delegate("CHECK", ctx.request, conf.ipam_type)
        from .check import verify

        verify(ctx, conf, endpoint, prev)

    def status(self, request: Request) -> None:
        """50 when no ADD can work now: the master is missing or down (linkInContainer: its
        master is in each container, not checked here), or the IPAM cannot serve."""
        from ...linux import links

        conf = mv_config.load(request)
        if not conf.linkInContainer:
            with kernel_errors("read the master"), links.rtnl() as ipr:
                name = conf.master
                if not name:
                    from .kernel import default_master

                    try:
                        name = default_master(ipr)
                    except CNIError as err:
                        raise CNIError(NOT_AVAILABLE, "no master interface", err.details) from None
                problem = master_problem(ipr, name)
            if problem:
                raise CNIError(NOT_AVAILABLE, problem, "macvlan endpoints need their master up")
        if conf.ipam_type:
            ipam.require_version(request, conf.ipam_type)
            ipam.delegate("STATUS", request, conf.ipam_type)

    def health(self, network, endpoints) -> list[str]:
        """The masters of the network's endpoints (in this netns) that are missing or down."""
        from ...linux import links

        masters = sorted({ep.data.get("master") for ep in endpoints
                          if ep.data.get("master") and not ep.data.get("in_container")})
        problems = []
        with links.rtnl() as ipr:
            for name in masters:
                problem = master_problem(ipr, name)
                if problem:
                    count = sum(ep.data.get("master") == name for ep in endpoints)
                    problems.append(f"{problem}: {count} endpoint(s) of network {network.name!r} have no "
                                    f"connectivity")
        return problems

    def gc(self, request: Request, valid, remaining) -> None:
        conf = mv_config.load(request)
        if conf.ipam_type and ipam.speaks_status(request, conf.ipam_type):
            ipam.gc(request, conf.ipam_type, valid | ipam.held_by(remaining))

    def orphans(self, ctx: Context, endpoints) -> list:
        from .sweep import orphans

        return orphans(ctx, endpoints)

    def remove_orphan(self, ctx: Context, orphan) -> None:
        from .sweep import remove

        remove(ctx, orphan)


def master_problem(ipr, name: str) -> str | None:
    """Why master `name` cannot carry traffic (missing, down), or None."""
    from ...linux import links

    link = links.get_link(ipr, name)
    if link is None:
        return f"master interface {name!r} does not exist"
    if not links.is_up(link):
        return f"master interface {name!r} is down"
    return None


def _release_quietly(ctx: Context, endpoint: Endpoint) -> None:
    try:
        ipam.release_recorded(endpoint.data["ipam"], ctx.request)
    except Exception:
        pass
