"""What a sweep finds of the bridge driver's kind (Driver.orphans): host veths, nftables
elements, route_localnet users (localnet.py) and cnm-ipam leases that no endpoint record of
the store owns.

Veths carry their owner tag (`<endpoint id>@<store tag>`) as their alias, nft elements as
their comment; only those with this store's tag are removable. Leases carry no tag: a lease
in a lease directory this store's endpoints use, held by an attachment this store has no
record of, is another's (a host-local pod from before a migration): reported, never removed
(its runtime's DEL, or GC with valid-attachments, releases it).
"""

from __future__ import annotations

import base64
import json
import re

from ...cnm.model import STORE_TAG_LEN, Endpoint, parse_owner_tag
from ...ipam.disk import DEFAULT_DATA_DIR, LeaseDir, PathError
from ...linux import links, veth
from ..base import Context, Orphan
from . import localnet, shared

HOST_VETH = re.compile(r"^cnm[0-9a-f]{12}$")  # endpoint.host_veth_name()
UNTAGGED_OWNER = re.compile(r"^[0-9a-f]{24}$")  # an endpoint id: the owner an older version wrote


def orphans(ctx: Context, endpoints: list[Endpoint]) -> list[Orphan]:
    tag = ctx.store_id[:STORE_TAG_LEN]
    ids = {ep.id for ep in endpoints}
    return _veths(tag, ids) + _elements(tag, ids) + _localnet_users(ctx, tag, ids) + _foreign_leases(endpoints)


def remove(ctx: Context, orphan: Orphan) -> None:
    from ...linux import nft

    if orphan.kind == "veth":
        with links.rtnl() as ipr:
            owner = parse_owner_tag(veth.alias(ipr, orphan.name) or "")
            if owner is not None and owner[1] == ctx.store_id[:STORE_TAG_LEN]:  # still ours
                veth.delete(ipr, orphan.name)
    elif orphan.kind == "nft":
        if shared.touches(orphan.targets):  # a bridge's shared elements stay while it has endpoints
            with ctx.locked(shared.LOCK):
                nft.commit(remove=shared.own(orphan.targets), owner=orphan.name)
                shared.settle(shared.bridges_of(orphan.targets))
        else:
            nft.commit(remove=orphan.targets, owner=orphan.name)
    elif orphan.kind == "localnet":
        bridge, owner = orphan.targets
        with ctx.locked("localnet"):  # as the driver's acquire and release
            localnet.release(ctx.env, owner, bridge)


def _veths(tag: str, ids: set[str]) -> list[Orphan]:
    found = []
    prefixes = {i[:12] for i in ids}
    with links.rtnl() as ipr:
        for link in ipr.iproute.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            if not HOST_VETH.fullmatch(name):
                continue
            info = link.get_attr("IFLA_LINKINFO")
            if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
                continue
            owner = parse_owner_tag(link.get_attr("IFLA_IFALIAS") or "")
            if owner is not None and owner[1] == tag:
                if owner[0] not in ids:
                    found.append(Orphan("veth", name, f"endpoint {owner[0]} has no record", True, owner[0]))
            elif owner is None and name[3:] not in prefixes:
                found.append(Orphan("veth", name, "a cnm veth without an owner tag (an older version's, or made "
                                                  "by hand): not provably this store's, kept", False))
    return found


def _elements(tag: str, ids: set[str]) -> list[Orphan]:
    from ...linux import nft

    stale: dict[str, list] = {}
    untagged: dict[str, int] = {}
    for family in nft.LAYOUT:
        try:
            found = nft.elements_with_comments(family)
        except nft.NftUnavailable:  # no nftables at all: nothing of ours can exist
            continue
        for element, comment in found:
            text = nft.owner_of(comment or "")
            owner = parse_owner_tag(text)
            if owner is not None:
                if owner[1] == tag and owner[0] not in ids:
                    stale.setdefault(text, []).append(element)
            elif UNTAGGED_OWNER.fullmatch(text) and text not in ids:
                untagged[text] = untagged.get(text, 0) + 1
    out = [Orphan("nft", owner, f"{len(els)} element(s) of endpoint {owner.split('@')[0]}, which has no record",
                  True, owner.split("@")[0], els) for owner, els in sorted(stale.items())]
    out += [Orphan("nft", owner, f"{n} element(s) without a store tag (an older version's): not provably this "
                                 f"store's, kept", False) for owner, n in sorted(untagged.items())]
    return out


def _localnet_users(ctx: Context, tag: str, ids: set[str]) -> list[Orphan]:
    """Endpoints of this store recorded as needing route_localnet on a bridge of this netns
    (an ADD that died before its record, a record lost): released, the knob restored after
    the last."""
    found = []
    for bridge, owner in localnet.users(ctx.env):
        parsed = parse_owner_tag(owner)
        if parsed is not None and parsed[1] == tag and parsed[0] not in ids:
            found.append(Orphan("localnet", f"{bridge}/{owner}", f"route_localnet on {bridge} for endpoint "
                                f"{parsed[0]}, which has no record", True, parsed[0], [bridge, owner]))
    return found


def _foreign_leases(endpoints: list[Endpoint]) -> list[Orphan]:
    """Leases in the cnm-ipam and host-local lease directories this store's endpoints use, held
    by attachments this store has no record of."""
    dirs: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for ep in endpoints:
        rec = ep.data.get("ipam") or {}
        if rec.get("type") not in ("cnm-ipam", "host-local"):  # the lease directory format both use
            continue
        try:
            conf = json.loads(base64.b64decode(rec["stdin"]))
            key = ((conf.get("ipam") or {}).get("dataDir") or DEFAULT_DATA_DIR, conf["name"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        env = rec.get("env") or {}
        dirs.setdefault(key, set()).add((env.get("CNI_CONTAINERID") or ep.container_id,
                                         env.get("CNI_IFNAME") or ep.ifname))
    found = []
    for (data_dir, network), recorded in sorted(dirs.items()):
        try:
            leases = LeaseDir.existing(data_dir, network)
        except (OSError, PathError):
            continue
        if leases is None:
            continue
        with leases:
            owners = leases.leases()
        ids = {cid for cid, _ in recorded}
        for addr, (cid, ifname) in sorted(owners.items(), key=lambda kv: str(kv[0])):
            if (cid in ids) if ifname is None else ((cid, ifname) in recorded):
                continue
            found.append(Orphan("lease", f"{network}/{addr}",
                                f"foreign: held by {cid}/{ifname or '?'} in {data_dir}, which this store did not "
                                f"record (another plugin's, e.g. host-local's before a migration): kept; its "
                                f"runtime's DEL or GC releases it", False))
    return found
