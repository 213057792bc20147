"""Which of the other nodes' records the mesh programs.

The kernel keeps one FDB entry per MAC on the VXLAN device: a second record with a VTEP MAC
the first already has (a cloned or hostile record, two nodes deriving one MAC) would move the
first node's traffic to the second's VTEP. The record whose key was created first keeps the
MAC; a later one with it (or with this node's own MAC) is not programmed, and is reported."""

from __future__ import annotations

from .lease import Record


def select(records, node: str, own_subnet, own_ip: str, own_mac: str) -> tuple[list[Record], list[tuple[Record, str]]]:
    """(the records to program, [(a record left out, why)]) among `records`, this node's own
    (by name, subnet or VTEP IP) excluded."""
    others = [r for r in records if r.node != node and r.subnet != own_subnet and r.vtep_ip != own_ip]
    kept: list[Record] = []
    dropped: list[tuple[Record, str]] = []
    first: dict[str, Record] = {}
    for r in sorted(others, key=lambda r: (r.created, r.subnet)):
        holder = first.get(r.vtep_mac)
        if r.vtep_mac == own_mac:
            dropped.append((r, f"node {r.node!r} ({r.subnet}, VTEP {r.vtep_ip}) has this node's own VTEP MAC "
                               f"{r.vtep_mac}: not programmed"))
        elif holder is not None and holder.vtep_ip != r.vtep_ip:
            dropped.append((r, f"node {r.node!r} ({r.subnet}, VTEP {r.vtep_ip}) has the VTEP MAC {r.vtep_mac} of "
                               f"node {holder.node!r} ({holder.subnet}, VTEP {holder.vtep_ip}): not programmed"))
        else:
            first.setdefault(r.vtep_mac, r)
            kept.append(r)
    return kept, dropped
