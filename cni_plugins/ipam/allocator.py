"""Allocation, release and accounting over a LeaseDir, with host-local's rules and messages.

Callers hold the directory's flock (`with store.locked():`) around every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..cni.errors import IPAM_FAILURE, CNIError
from .disk import LeaseDir
from .leases import Leases
from .ranges import IP, Range, RangeSet


@dataclass(frozen=True)
class Allocation:
    address: IP
    range: Range
    set_index: int

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.range.subnet.prefixlen}"

    @property
    def gateway(self) -> IP:
        return self.range.gateway


def _fail(index: int, message: str) -> CNIError:
    return CNIError(IPAM_FAILURE, f"failed to allocate for range {index}: {message}")


def allocate(store: LeaseDir, sets: Sequence[RangeSet], container_id: str, ifname: str,
             requested: Iterable[IP] = ()) -> list[Allocation]:
    """One address per range set for (container_id, ifname); all or nothing.

    A requested IP goes to the first set whose ranges contain it; a request no
    set can serve fails the whole ADD, as host-local does.
    """
    leases = store.lease_view()
    remaining = list(requested)
    made: list[Allocation] = []
    try:
        for index, rangeset in enumerate(sets):
            want = next((ip for ip in remaining if rangeset.contains(ip)), None)
            if want is not None:
                remaining.remove(want)
            made.append(_allocate_one(store, leases, rangeset, index, container_id, ifname, want))
        if remaining:
            raise CNIError(IPAM_FAILURE, "failed to allocate all requested IPs: " + " ".join(str(ip) for ip in remaining))
    except BaseException:
        for alloc in made:  # only what this ADD reserved; earlier leases stay
            store.release(alloc.address)
        raise
    return made


def _allocate_one(store: LeaseDir, leases: Leases, rangeset: RangeSet, index: int, container_id: str, ifname: str,
                  want: IP | None) -> Allocation:
    cid = container_id.strip()
    held = [addr for addr in (leases.addr(name) for name, owner_if in leases.held_by(cid).items()
                              if owner_if in (ifname, None)) if rangeset.contains(addr)]
    if held:
        addr = min(held, key=int)  # the lowest address: one stable message
        raise _fail(index, f"{addr} has been allocated to {cid}, duplicate allocation is not allowed")
    if want is not None:
        rng = rangeset.range_for(want)
        if want == rng.gateway:
            raise _fail(index, f"requested ip {want} is subnet's gateway")
        if str(want) in leases or not store.reserve(want, cid, ifname, index):
            raise _fail(index, f"requested IP address {want} is not available in range set {rangeset}")
        return Allocation(want, rng, index)
    for addr, rng in rangeset.iterate(store.last_reserved(index)):
        if str(addr) in leases:
            continue  # known taken: skip the syscall
        if store.reserve(addr, cid, ifname, index):
            return Allocation(addr, rng, index)
    raise _fail(index, f"no IP addresses available in range set: {rangeset}")


def free_count(store: LeaseDir, rangeset: RangeSet) -> int:
    """Addresses of the set an ADD could still get."""
    used = 0
    leases = store.lease_view()
    for name in leases.owners:
        addr = leases.addr(name)
        rng = rangeset.range_for(addr)
        if rng is not None and addr != rng.gateway:
            used += 1
    return rangeset.capacity() - used


def collect_garbage(store: LeaseDir, valid: set[tuple[str, str]]) -> list[IP]:
    """Release every lease whose attachment is not in `valid` (legacy files: by container id)."""
    valid_ids = {cid for cid, _ in valid}
    released = []
    leases = store.lease_view()
    for name, (owner, owner_if) in list(leases.owners.items()):
        keep = (owner in valid_ids) if owner_if is None else ((owner, owner_if) in valid)
        if not keep:
            addr = leases.addr(name)
            if store.release(addr):
                released.append(addr)
    return released
