"""nftables elements that the endpoints of one bridge share (linux/nft/elements.py SHARED_SETS).

isolateNetworks and icc=false are properties of a bridge for the routed path (the kernel's
forward hook sees the bridge, not the port a packet came from), so they are elements
`bridge . bridge` of iso_bridges / noicc_bridges. An element of a set is unique, while
every isolated endpoint of the bridge needs it: each endpoint also has its own element
`bridge . host veth` (iso_ports / noicc_ports), and the shared one stays exactly while its
bridge has one there. Removals never take a shared element directly (own()); settle() then
brings the shared sets in line with the per-endpoint ones, under the node lock LOCK, which
the ADD that installs them holds too (so a leaving endpoint never removes the element an
arriving one just relied on). A shared element is kept owned (its comment) by one of its
bridge's endpoints, so a sweep finds no orphan in it.
"""

from __future__ import annotations

from collections.abc import Iterable

LOCK = "bridges"


def touches(elements: Iterable) -> bool:
    """Do `elements` include per-endpoint or shared elements of a bridge?"""
    from ...linux import nft

    return any(_kind(e, nft) is not None for e in elements)


def own(elements: Iterable) -> list:
    """`elements` without the shared ones (what a removal may take away itself)."""
    from ...linux import nft

    return [e for e in elements if not (e.family == "inet" and e.set in nft.SHARED_SETS)]


def bridges_of(elements: Iterable) -> set[str]:
    from ...linux import nft

    return {e.key["concat"][0] for e in elements if _kind(e, nft) is not None}


def _kind(element, nft) -> str | None:
    if element.family != "inet":
        return None
    if element.set in nft.SHARED_SETS or element.set in nft.SHARED_SETS.values():
        return element.set
    return None


def settle(bridges: Iterable[str]) -> None:
    """Each shared element of `bridges` present, owned by one of the bridge's endpoints, while
    the bridge has an endpoint in the matching per-endpoint set; absent otherwise. The
    caller holds LOCK."""
    from ...linux import nft

    bridges = set(bridges)
    if not bridges:
        return
    members = nft.set_elements("inet", list(nft.SHARED_SETS.values()))
    present = {e.ident(): comment for e, comment in nft.set_elements("inet", list(nft.SHARED_SETS))}
    adds: dict[str, list] = {}
    removes = []
    for shared_set, member_set in nft.SHARED_SETS.items():
        for bridge in sorted(bridges):
            owners = [nft.owner_of(comment) for e, comment in members
                      if e.set == member_set and e.key["concat"][0] == bridge]
            element = nft.Element("inet", shared_set, {"concat": [bridge, bridge]})
            comment = present.get(element.ident())
            if owners and (comment is None or nft.owner_of(comment) not in owners):
                adds.setdefault(owners[0], []).append(element)  # (re)added with a live owner
                if comment is not None:
                    removes.append(element)
            elif not owners and comment is not None:
                removes.append(element)
    readded = [e for elements in adds.values() for e in elements]
    gone = [e for e in removes if e not in readded]
    if gone:
        nft.commit(remove=gone, owner="settle")  # (the owner only names the comment of an add-then-delete)
    for owner, elements in adds.items():  # an element re-owned: removed and added in one transaction
        nft.commit(add=elements, remove=[e for e in removes if e in elements], owner=owner)
