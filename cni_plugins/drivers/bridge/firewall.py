"""What a store's live bridge endpoints need in our nftables tables, rebuilt from the store.

ADD records every element it programs with its endpoint (endpoint.data["nft"]), so the
store alone knows the firewall state of its endpoints. After `nft flush ruleset`, a
firewall reload, a deleted table or a flushed chain it is put back from there by
  - the next command of the store whose commit finds the layout gone (nft.commit's `live`),
  - `cnmctl gc` (Driver.losses / Driver.restore, which `cnmctl doctor` reports),
  - the resident helper, which watches nftables (cli/nftwatch.py),
and STATUS says 51 until it is. Only elements are added, and only where their key is free:
nothing present is removed or replaced, whoever's it is. And only for endpoints whose host
veth is in the network namespace being restored: a store also used from another namespace,
or a sweep run in the wrong one, never puts its pods' elements where they do not live.
"""

from __future__ import annotations

from ...cnm.model import READY, STORE_TAG_LEN, Endpoint, owner_tag, parse_owner_tag
from ...linux import links
from ..base import Loss
from . import ports, shared
from .endpoint import recorded_elements


def expected_state(store_id: str, endpoints) -> list[tuple[str, list]]:
    """[(owner tag, elements)]: what the store's live (READY) bridge endpoints need installed.

    A published port that several endpoints of one container record (the same host port on
    two of its networks, see ports.py) is installed for one of them: the active one that
    published earliest, whom a DEL's handover would have chosen (a kept, inactive endpoint
    only when no active one records it)."""
    live = _here(store_id, [ep for ep in endpoints
                            if ep.phase == READY and ep.driver == "bridge" and ep.data.get("nft")])
    recorded = {ep.id: recorded_elements(ep) for ep in live}
    holder: dict[tuple[str, str], str] = {}
    for ep in sorted(live, key=_seniority):
        for element in recorded[ep.id]:
            if ports.is_port(element):
                holder.setdefault((ep.container_id, ports.slot(element)), ep.id)
    out = []
    for ep in live:
        elements = [e for e in recorded[ep.id]
                    if not ports.is_port(e) or holder[(ep.container_id, ports.slot(e))] == ep.id]
        out.append((owner_tag(store_id, ep.id) if store_id else ep.id, elements))
    return out


def _here(store_id: str, endpoints: list[Endpoint]) -> list[Endpoint]:
    """The endpoints whose host veth is in this network namespace, its alias naming them (or
    no alias, or the bare endpoint id: an older version's veth)."""
    if not endpoints:
        return []

    with links.rtnl() as ipr:
        aliases = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_IFALIAS") or "" for link in ipr.iproute.get_links()}
    out = []
    for ep in endpoints:
        alias = aliases.get(ep.data.get("host_veth"))
        if alias is None:
            continue
        owner = parse_owner_tag(alias)
        if alias in ("", ep.id) or owner == (ep.id, store_id[:STORE_TAG_LEN]):
            out.append(ep)
    return out


def _seniority(ep: Endpoint) -> tuple:
    return (not ep.active, ep.data.get(ports.PUBLISHED_AT, 0), ep.ifname, ep.id)


def losses(store_id: str, endpoints) -> list[Loss]:
    """What the store's live endpoints lack in this netns's tables (read-only)."""
    from ...linux import nft

    wanted = expected_state(store_id, endpoints)
    if not any(elements for _, elements in wanted):
        return []
    return _describe(nft.audit(wanted), endpoints)


def restore(store_id: str, endpoints, node_lock) -> list[Loss]:
    """Put back the layout and every missing element of the live endpoints, in one
    transaction, under the node's "ports" lock (no command publishes a host port meanwhile:
    a port one of them lost is theirs again before anyone else can take it). Returns what
    was put back."""
    from ...linux import nft

    wanted = expected_state(store_id, endpoints)
    if not any(elements for _, elements in wanted):
        return []
    with node_lock("ports"), node_lock(shared.LOCK):  # (the order an ADD takes them in)
        return _describe(nft.restore(wanted), endpoints)


def _describe(damage, endpoints) -> list[Loss]:
    by_id = {ep.id: ep for ep in endpoints}
    out = [Loss("nft-layout", f"{family} cnm", why) for family, why in sorted(damage.layout.items())]
    for owner, elements in damage.missing:
        ep = by_id.get(ports.endpoint_of(owner))
        who = f"{ep.container_id}/{ep.ifname} on {ep.network}" if ep is not None else owner
        out.append(Loss("nft-missing", owner, f"{len(elements)} nftables element(s) of {who} missing "
                                              f"(e.g. {elements[0]})", ports.endpoint_of(owner)))
    return out
