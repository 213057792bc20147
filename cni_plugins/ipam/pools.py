"""Docker's default address pools for networks that configure no range.

A network without `ranges`/`subnet` gets the first pool of the list that
overlaps no route of the netns the plugin runs in and no other cnm network's
pool (libnetwork ipamutils: 172.17-31.0.0/16, then 192.168.0.0/16 in /20s;
`defaultAddressPools` replaces the list as dockerd's `default-address-pools`).

The choice is persisted in <dataDir>/<network>/cnm-pool.json (a name no lease,
lock or last_reserved_ip file can have), so it stays stable while the network
is in use and every other network sees it. Choosing is serialised by a flock
on dataDir itself, which host-local never takes.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import json
import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

from ..linux.fs import make_dirs
from .disk import DIR_MODE, LeaseDir, PathError
from .leases import ip_of_name, is_lease_name
from .ranges import Net, RangeSet, make_range

POOL_FILE = "cnm-pool.json"

# (base, size): libnetwork's local-scope defaults.
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16),
    ("172.18.0.0/16", 16),
    ("172.19.0.0/16", 16),
    ("172.20.0.0/14", 16),
    ("172.24.0.0/14", 16),
    ("172.28.0.0/14", 16),
    ("192.168.0.0/16", 20),
)


class NoPoolError(Exception):
    """Every candidate pool overlaps a route or another network."""


@functools.lru_cache(maxsize=1)
def _default_pools() -> tuple[tuple[Net, int], ...]:
    return tuple((ipaddress.ip_network(base), size) for base, size in DEFAULT_POOLS)


def default_pools() -> list[tuple[Net, int]]:
    """Docker's default pools (parsed once: every IPAM config load asks for them)."""
    return list(_default_pools())


def candidates(pools: Sequence[tuple[Net, int]]) -> Iterator[Net]:
    """Every pool in order (lazily: a 10.0.0.0/8 base in /24s is 65536 of them)."""
    for base, size in pools:
        yield from base.subnets(new_prefix=size)


def pool_range_set(pool: Net) -> RangeSet:
    """The range set of a pool: host-local defaults, so the gateway is pool+1."""
    return RangeSet([make_range(str(pool))])


@contextmanager
def data_dir_locked(data_dir: str) -> Iterator[None]:
    """Exclusive flock on the dataDir directory: one pool choice at a time on this node."""
    make_dirs(data_dir, DIR_MODE)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_pool(store: LeaseDir) -> Net | None:
    data = store.read(POOL_FILE)
    if not data:
        return None
    try:
        return ipaddress.ip_network(json.loads(data)["subnet"])
    except (ValueError, KeyError, TypeError):
        return None


def _other_networks_use(data_dir: str, network: str) -> list[Net]:
    """Pools chosen by other networks, and every address leased in another network's dir."""
    used: list[Net] = []
    try:
        entries = os.listdir(data_dir)
    except OSError:
        return used
    for entry in entries:
        if entry == network:
            continue
        try:
            other = LeaseDir.existing(data_dir, entry) if os.path.isdir(os.path.join(data_dir, entry)) else None
        except (PathError, OSError):
            other = None
        if other is None:
            continue
        with other:
            pool = read_pool(other)
            if pool is not None:
                used.append(pool)
            for name in other.names():
                addr = ip_of_name(name)
                if addr is not None:
                    used.append(ipaddress.ip_network(addr))
    return used


def first_free(pools: Sequence[tuple[Net, int]], taken: Iterable[Net]) -> Net | None:
    # A default route overlaps everything; Docker ignores it (its netlink Dst is nil).
    blockers = [t for t in taken if t.prefixlen > 0]
    for pool in candidates(pools):
        if not any(pool.version == b.version and pool.overlaps(b) for b in blockers):
            return pool
    return None


def choose(store: LeaseDir, data_dir: str, network: str, pools: Sequence[tuple[Net, int]],
           routes: Iterable[Net]) -> Net:
    """This network's pool: the persisted one, else the first free one (persisted now).

    The caller holds data_dir_locked(data_dir).
    """
    chosen = read_pool(store)
    if chosen is not None:
        return chosen
    pool = first_free(pools, list(routes) + _other_networks_use(data_dir, network))
    if pool is None:
        raise NoPoolError(", ".join(f"{base}/{size}" for base, size in pools))
    store.write_atomic(POOL_FILE, json.dumps({"subnet": str(pool), "gateway": str(pool.network_address + 1)}).encode())
    return pool


def peek(data_dir: str, network: str, pools: Sequence[tuple[Net, int]], routes: Iterable[Net]) -> Net | None:
    """The pool an ADD would use now, changing nothing (STATUS)."""
    store = LeaseDir.existing(data_dir, network)
    if store is not None:
        with store:
            chosen = read_pool(store)
        if chosen is not None:
            return chosen
    return first_free(pools, list(routes) + _other_networks_use(data_dir, network))


def release_if_unused(store: LeaseDir) -> bool:
    """Give the pool back when no lease is left (GC); the caller holds both locks."""
    if any(is_lease_name(name) for name in store.names()):
        return False
    return store.remove(POOL_FILE)
