"""What a sweep finds of the macvlan driver's kind (Driver.orphans): macvlans in this network
namespace named from an endpoint id that no endpoint record of the store owns. The driver
makes its macvlans right in the container's netns, where they live and die with it; one in
the node's netns was put there by hand or by an earlier build that created them there first.
Only those tagged with this store are removable."""

from __future__ import annotations

import re

from ...cnm.model import STORE_TAG_LEN, Endpoint, parse_owner_tag
from ..base import Context, Orphan
from .kernel import LINK_PREFIX

OUR_LINK = re.compile(rf"^{LINK_PREFIX}[0-9a-f]{{12}}$")


def orphans(ctx: Context, endpoints: list[Endpoint]) -> list[Orphan]:
    from ...linux import links, macvlan

    tag = ctx.store_id[:STORE_TAG_LEN]
    ids = {ep.id for ep in endpoints}
    prefixes = {i[:12] for i in ids}
    found = []
    with links.rtnl() as ipr:
        for link in ipr.iproute.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            if not OUR_LINK.fullmatch(name) or macvlan.info(link)[0] != "macvlan":
                continue
            owner = parse_owner_tag(link.get_attr("IFLA_IFALIAS") or "")
            if owner is not None and owner[1] == tag:
                if owner[0] not in ids:
                    found.append(Orphan("macvlan", name, f"endpoint {owner[0]} has no record", True, owner[0]))
            elif owner is None and name[len(LINK_PREFIX):] not in prefixes:
                found.append(Orphan("macvlan", name, "a cnm macvlan without an owner tag (an ADD that died before "
                                                     "tagging it, whose record is gone): not provably this store's, "
                                                     "kept", False))
    return found


def remove(ctx: Context, orphan: Orphan) -> None:
    from ...linux import links, macvlan

    if orphan.kind != "macvlan":
        return
    with links.rtnl() as ipr:
        macvlan.delete_if_ours(ipr, orphan.name, ctx.owner_of(orphan.owner), False)
