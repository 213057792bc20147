"""Read-only scan for stale state: what a node-wide `cnmctl gc` would remove.

Stale = store records whose namespace is gone, and our kernel objects that no record
owns: sandboxes whose netns is gone (with their endpoints), endpoints without a
sandbox record, pins under $CNM_RUN_DIR/netns without a sandbox, host veths named
cnm<endpoint id> without an endpoint, nftables elements of our `cnm` tables whose
owner comment names no endpoint. Nothing is changed here (`cnmctl doctor` reports).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..controller import pin_dir
from . import inspect as views

HOST_VETH = re.compile(r"^cnm[0-9a-f]{12}$")  # drivers/bridge host_veth_name(): "cnm" + endpoint id[:12]


@dataclass(frozen=True)
class Stale:
    kind: str  # sandbox | endpoint | pin | veth | nft
    name: str
    why: str


def scan(state_dir: str, env=None) -> list[Stale]:
    env = os.environ if env is None else env
    snap = views.snapshot(state_dir)
    found: list[Stale] = []
    sandbox_ids = {sb.id for sb in snap.sandboxes}
    for sb in snap.sandboxes:
        if views.sandbox_state(sb) != "gone":
            continue
        eps = snap.endpoints_of(sandbox=sb.id)
        who = ", ".join(f"{e.container_id}/{e.ifname} on {e.network}" for e in eps) or "no endpoints"
        found.append(Stale("sandbox", sb.id, f"its network namespace {sb.pin or sb.netns} is gone ({who})"))
    for ep in snap.endpoints:
        if ep.sandbox not in sandbox_ids:
            found.append(Stale("endpoint", ep.id, f"{ep.container_id}/{ep.ifname} on {ep.network}: "
                                                  f"sandbox {ep.sandbox} has no record"))
    pins = {sb.pin for sb in snap.sandboxes if sb.pin}
    directory = pin_dir(env)
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        entries = []
    for entry in entries:
        path = os.path.join(directory, entry)
        if path not in pins:
            found.append(Stale("pin", path, "a pinned namespace no sandbox record owns"))
    ids = {ep.id for ep in snap.endpoints}
    veths = {ep.data.get("host_veth") for ep in snap.endpoints if ep.data.get("host_veth")}
    for name in _host_veths():
        if name not in veths and not any(i.startswith(name[3:]) for i in ids):
            found.append(Stale("veth", name, "a host veth of ours without an endpoint"))
    for owner, count in sorted(_nft_owners().items()):
        if owner not in ids:
            found.append(Stale("nft", owner, f"{count} nftables element(s) owned by an endpoint that does not exist"))
    return found


def _host_veths() -> list[str]:
    from ..linux import links

    names = []
    with links.rtnl() as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            name = link.get_attr("IFLA_IFNAME") or ""
            if kind == "veth" and HOST_VETH.match(name):
                names.append(name)
    return sorted(names)


def _nft_owners() -> dict[str, int]:
    """Owner comment -> element count, over our tables (none when nft is missing or unusable)."""
    from ..linux import nft

    owners: dict[str, int] = {}
    for family in nft.LAYOUT:
        try:
            elements = nft._elements(family)  # (Element, comment) pairs of table <family> cnm
        except (nft.NftError, OSError):
            continue
        for _, comment in elements:
            if comment:
                owners[comment] = owners.get(comment, 0) + 1
    return owners
