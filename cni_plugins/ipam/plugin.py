"""cnm-ipam: the host-local compatible IPAM plugin (ADD, DEL, CHECK, GC, STATUS).

Results carry IPs (no interface, no interface index), routes and dns; the
dispatcher prints them in the config's version. State is host-local's lease
directory (disk.py), so Go host-local and cnm-ipam can replace each other.
"""

from __future__ import annotations

import ipaddress
import os
from contextlib import ExitStack

from ..cni.attachments import valid_attachments
from ..cni.errors import CHECK_FAILED, INVALID_CONFIG, IO_FAILURE, IPAM_FAILURE, NOT_AVAILABLE, CNIError
from ..cni.request import Request
from ..cni.result import DNS, IPConfig, Result
from ..linux.procnet import route_destinations
from . import allocator, pools, resolvconf
from .config import IpamConfig, load
from .disk import LeaseDir
from .ranges import RangeSet



def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(IO_FAILURE, f"{what}: {exc.strerror or exc}", getattr(exc, "filename", None) or "")


def _host_routes():
    return route_destinations()


class IpamPlugin:
    """The Plugin protocol of cni.dispatch; in-process callers use it through ipam.client."""

    # ---- ADD -----------------------------------------------------------------------------
    def add(self, request: Request) -> Result:
        cfg = load(request)
        dns = self._dns(cfg)
        try:
            with ExitStack() as stack:
                if not cfg.range_sets:  # no range configured: hold the pool choice until leased
                    stack.enter_context(pools.data_dir_locked(cfg.data_dir))
                store = stack.enter_context(LeaseDir(cfg.data_dir, cfg.network))
                sets = cfg.range_sets or [self._default_pool_set(cfg, store)]
                with store.locked():
                    try:
                        made = allocator.allocate(store, sets, request.container_id, request.ifname, cfg.requested)
                    except BaseException:
                        if not cfg.range_sets:  # a failed ADD keeps no pool choice (none if no lease is left)
                            pools.release_if_unused(store)
                        raise
        except OSError as exc:
            raise _io_error("cnm-ipam: cannot use the lease directory", exc) from None
        return Result(
            ips=[IPConfig(address=a.cidr, gateway=str(a.gateway)) for a in made],
            routes=list(cfg.routes),
            dns=dns,
        )

    @staticmethod
    def _dns(cfg: IpamConfig) -> DNS:
        if not cfg.resolv_conf:
            return DNS()
        try:
            return resolvconf.load(cfg.resolv_conf)
        except OSError as exc:
            raise CNIError(INVALID_CONFIG, f"invalid ipam.resolvConf: {exc.strerror}", cfg.resolv_conf) from None

    @staticmethod
    def _default_pool_set(cfg: IpamConfig, store: LeaseDir) -> RangeSet:
        try:
            pool = pools.choose(store, cfg.data_dir, cfg.network, cfg.pools, _host_routes())
        except pools.NoPoolError as exc:
            try:
                os.rmdir(store.path)  # only while still empty: leave nothing behind for a failed ADD
            except OSError:
                pass
            raise CNIError(
                IPAM_FAILURE,
                "no free default address pool: every pool overlaps a route or another network",
                f"pools: {exc}",
            ) from None
        return pools.pool_range_set(pool)

    # ---- DEL -----------------------------------------------------------------------------
    def delete(self, request: Request) -> None:
        """Release every lease of (containerID, ifname); nothing to release is success."""
        cfg = load(request, lenient=True)
        try:
            store = LeaseDir.existing(cfg.data_dir, cfg.network)
            if store is None:
                return
            with store, store.locked():
                store.release_owner(request.container_id, request.ifname)
        except OSError as exc:
            raise _io_error("cnm-ipam: cannot release leases", exc) from None

    # ---- CHECK ---------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        """An allocation for (containerID, ifname) exists, and covers prevResult's IPs in our ranges."""
        cfg = load(request)
        try:
            store = LeaseDir.existing(cfg.data_dir, cfg.network)
            held: list = []
            sets: list[RangeSet] = []
            if store is not None:
                with store, store.locked():
                    held = store.find(request.container_id, request.ifname)
                    sets = cfg.range_sets or self._chosen_pool_sets(store)
        except OSError as exc:
            raise _io_error("cnm-ipam: cannot read leases", exc) from None
        if not held:
            raise CNIError(
                CHECK_FAILED,
                f"cnm-ipam: failed to find address added by container {request.container_id}",
                f"no lease for interface {request.ifname} in {cfg.data_dir}/{cfg.network}",
            )
        for addr in self._prev_ips(request):
            if any(s.contains(addr) for s in sets) and addr not in held:
                raise CNIError(
                    CHECK_FAILED,
                    f"cnm-ipam: {addr} of prevResult is not leased to container {request.container_id}",
                    f"leases of {request.ifname}: {', '.join(str(a) for a in held)}",
                )

    @staticmethod
    def _chosen_pool_sets(store: LeaseDir) -> list[RangeSet]:
        pool = pools.read_pool(store)
        return [pools.pool_range_set(pool)] if pool is not None else []

    @staticmethod
    def _prev_ips(request: Request) -> list:
        prev = request.config.get("prevResult")
        if not isinstance(prev, dict):
            return []
        try:
            result = Result.parse(prev, request.version)
        except CNIError:
            return []
        return [ipaddress.ip_interface(ip.address).ip for ip in result.ips]

    # ---- GC ------------------------------------------------------------------------------
    def gc(self, request: Request) -> None:
        """Release every lease whose attachment is not valid; no attachment list: remove nothing."""
        valid = valid_attachments(request.config)
        if valid is None:
            return
        cfg = load(request, lenient=True)
        try:
            if not os.path.isdir(os.path.join(cfg.data_dir, cfg.network)):
                return  # nothing leased, and GC creates nothing
            with pools.data_dir_locked(cfg.data_dir), LeaseDir(cfg.data_dir, cfg.network) as store:
                with store.locked():
                    allocator.collect_garbage(store, valid)
                    pools.release_if_unused(store)
        except OSError as exc:
            raise _io_error("cnm-ipam: garbage collection failed", exc) from None

    # ---- STATUS --------------------------------------------------------------------------
    def status(self, request: Request) -> None:
        """Code 50 when some range set has no free address (or no default pool is free)."""
        cfg = load(request)
        try:
            sets = cfg.range_sets
            if not sets:
                pool = pools.peek(cfg.data_dir, cfg.network, cfg.pools, _host_routes())
                if pool is None:
                    raise CNIError(NOT_AVAILABLE, "cnm-ipam: no free default address pool",
                                   "every pool overlaps a route or another network")
                sets = [pools.pool_range_set(pool)]
            store = LeaseDir.existing(cfg.data_dir, cfg.network)
            if store is None:
                return
            with store, store.locked():
                for index, rangeset in enumerate(sets):
                    if allocator.free_count(store, rangeset) <= 0:
                        raise CNIError(
                            NOT_AVAILABLE,
                            f"cnm-ipam: no IP addresses available in range set: {rangeset}",
                            f"range set {index} of network {cfg.network} is exhausted",
                        )
        except OSError as exc:
            raise _io_error("cnm-ipam: cannot read leases", exc) from None
