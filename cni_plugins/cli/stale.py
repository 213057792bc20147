"""Read-only scan for stale state: what a node-wide `cnmctl gc` would remove.

The same judgement as the reconcile of issue 8 (cni_plugins/reconcile.py), without
changing anything: sandboxes whose netns is gone (their endpoints go with them),
sandboxes without endpoints, endpoints without a sandbox record, pins under
$CNM_RUN_DIR/netns without a sandbox, host veths named cnm<endpoint id[:12]> without
an endpoint, nftables elements of our `cnm` tables whose owner comment (an endpoint
id) names no endpoint, and cnm-ipam leases (in a lease directory an endpoint's
recorded IPAM call names) whose (containerID, ifname) has no endpoint.
Veths and nft elements are read in the network namespace cnmctl runs in.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass

from ..controller import pin_dir
from . import inspect as views

HOST_VETH = re.compile(r"^cnm[0-9a-f]{12}$")  # drivers/bridge host_veth_name(): "cnm" + endpoint id[:12]
OWNER = re.compile(r"^[0-9a-f]{24}$")  # cnm.model.endpoint_id(): the owner in nft elements' comments


@dataclass(frozen=True)
class Stale:
    kind: str  # sandbox | endpoint | pin | veth | nft | lease
    name: str
    why: str


def scan(state_dir: str, env=None) -> list[Stale]:
    env = os.environ if env is None else env
    snap = views.snapshot(state_dir)
    found: list[Stale] = []
    found += _sandboxes(snap)
    found += _pins(snap, pin_dir(env))
    found += _veths({ep.id[:12] for ep in snap.endpoints})
    found += _nft({ep.id for ep in snap.endpoints})
    found += _leases(snap)
    return found


def _sandboxes(snap: views.Snapshot) -> list[Stale]:
    found = []
    for sb in snap.sandboxes:
        eps = snap.endpoints_of(sandbox=sb.id)
        if not eps:
            found.append(Stale("sandbox", sb.id, "a sandbox without endpoints"))
        elif views.sandbox_state(sb, snap.earlier_boot) == "gone":
            who = ", ".join(f"{e.container_id}/{e.ifname} on {e.network}" for e in eps)
            found.append(Stale("sandbox", sb.id, f"its network namespace {sb.pin or sb.netns} is gone; "
                                                 f"its endpoints are released: {who}"))
    known = {sb.id for sb in snap.sandboxes}
    for ep in snap.endpoints:
        if ep.sandbox not in known:
            found.append(Stale("endpoint", ep.id, f"{ep.container_id}/{ep.ifname} on {ep.network}: "
                                                  f"sandbox {ep.sandbox} has no record"))
    return found


def _pins(snap: views.Snapshot, directory: str) -> list[Stale]:
    pins = {sb.pin for sb in snap.sandboxes if sb.pin}
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return []
    return [Stale("pin", os.path.join(directory, e), "a pinned namespace no sandbox record owns")
            for e in entries if os.path.join(directory, e) not in pins]


def _veths(owned_prefixes: set[str]) -> list[Stale]:
    from ..linux import links

    found = []
    with links.rtnl() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME") or ""
            if not HOST_VETH.match(name) or name[3:] in owned_prefixes:
                continue
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == "veth":
                found.append(Stale("veth", name, "a host veth of ours without an endpoint"))
    return sorted(found, key=lambda s: s.name)


def _nft(endpoint_ids: set[str]) -> list[Stale]:
    """Our tables' elements by owner; none when nft is missing (then nothing of ours exists)."""
    from ..linux import nft

    owners: dict[str, int] = {}
    for family in nft.LAYOUT:
        try:
            elements = nft._elements(family)  # (Element, owner comment) of table <family> cnm
        except (nft.NftError, OSError):
            continue
        for _, comment in elements:
            owner = nft.owner_of(comment or "")  # "<endpoint id>" or "<endpoint id> <note>"
            if OWNER.match(owner) and owner not in endpoint_ids:
                owners[owner] = owners.get(owner, 0) + 1
    return [Stale("nft", owner, f"{count} nftables element(s) owned by an endpoint that does not exist")
            for owner, count in sorted(owners.items())]


def _leases(snap: views.Snapshot) -> list[Stale]:
    """cnm-ipam leases without an endpoint, in the lease directories endpoints name."""
    from ..ipam.disk import DEFAULT_DATA_DIR, LeaseDir, PathError

    dirs: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for ep in snap.endpoints:
        rec = ep.data.get("ipam") or {}
        if rec.get("type") != "cnm-ipam":
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
    for (data_dir, network), valid in sorted(dirs.items()):
        try:
            leases = LeaseDir.existing(data_dir, network)
        except (OSError, PathError):
            continue
        if leases is None:
            continue
        with leases:
            owners = leases.leases()
        valid_ids = {cid for cid, _ in valid}
        for addr, (cid, ifname) in sorted(owners.items(), key=lambda kv: str(kv[0])):
            if (cid in valid_ids) if ifname is None else ((cid, ifname) in valid):
                continue
            found.append(Stale("lease", f"{network}/{addr}",
                               f"in {data_dir}: held by {cid}/{ifname or '?'}, which has no endpoint"))
    return found
