"""One overlay network on this node, brought in line with etcd: the lease claimed (or kept),
the VXLAN device as configured, and the mesh programmed from a fresh list of the other
nodes' records. The resident helper runs it when it starts and after every reconnect; an ADD
runs it once when no helper keeps the lease fresh.

`settings` is what the network's config says about the overlay (saved in the node's state
file, so the helper can serve the network without its conflist).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import sqlite3
import time
from dataclasses import dataclass, field

from ...cnm.model import STORE_TAG_LEN
from ...cnm.store import Store, StoreError
from . import etcd, lease, peers, state

SETTINGS_KEYS = ("subnet", "hostSubnetLength", "vni", "port", "underlayInterface", "underlayAddress", "mtu",
                 "nodeName", "leaseTTL")


class MtuTooLarge(Exception):
    pass


class SetupError(Exception):
    """The kernel refused a step (the underlay, the VXLAN device, a mesh entry)."""


def settings_of(conf) -> dict:
    """The overlay part of a validated OverlayConfig, as saved in the state file."""
    settings = {k: getattr(conf, k) for k in SETTINGS_KEYS}
    settings["store"] = conf.store.model_dump()
    settings["name"] = conf.name
    return settings


def client_of(settings: dict, timeout: float = etcd.DEFAULT_TIMEOUT) -> etcd.Client:
    store = settings["store"]
    tls = etcd.TLS(store.get("caFile", ""), store.get("certFile", ""), store.get("keyFile", ""))
    return etcd.Client(store["endpoints"], tls, timeout=timeout)


def layout_of(settings: dict) -> lease.Layout:
    return lease.Layout(settings["store"].get("prefix") or "/cnm", settings["name"],
                        ipaddress.ip_network(settings["subnet"]), settings["hostSubnetLength"])


def device_names(network: str) -> tuple[str, str]:
    tag = hashlib.sha256(network.encode()).hexdigest()[:8]
    return f"cnmov{tag}", f"cnmvx{tag}"


def vtep_mac(node: str, network: str) -> str:
    """The node's VTEP MAC on `network`: derived from both (locally administered, unicast), so
    a recreated device has the same MAC and the records of the other nodes stay right."""
    octets = bytearray(hashlib.sha256(f"{node}\0{network}".encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


@dataclass
class Outcome:
    data: dict  # what was written to the state file
    skipped: list[str]  # records ignored, with why
    changed: int = 0
    removed: int = 0
    conflicts: list[str] = field(default_factory=list)  # records not programmed (peers.select)
    records: list = field(default_factory=list)  # the valid records of the list it programmed from


def local_underlay(settings: dict) -> tuple[str, int, str, int]:
    from ...linux import links, vxlan

    with links.rtnl() as ipr:
        return vxlan.underlay(ipr, settings.get("underlayInterface", ""), settings.get("underlayAddress", ""))


def mtu_of(settings: dict, underlay_mtu: int) -> int:
    from ...linux.vxlan import VXLAN_OVERHEAD

    most = underlay_mtu - VXLAN_OVERHEAD
    mtu = settings.get("mtu") or most
    if mtu > most:
        raise MtuTooLarge(f"mtu: {mtu} does not fit the underlay (MTU {underlay_mtu}): at most {most}")
    return mtu


def converge(settings: dict, state_dir: str, client: etcd.Client | None = None,
             listed: list | None = None) -> Outcome:
    """Claim (or keep) the lease, ensure the device, program the mesh from a fresh list (or
    from `listed`, the key-values the caller just listed: one list and one parse a converge),
    save the state file. A subnet claimed here is given back if the rest fails."""
    from ...linux import vxlan

    network = settings["name"]
    started = time.time()  # (the lease is confirmed as of before the claim refreshed it)
    node = lease.node_identity(settings.get("nodeName", ""))
    try:
        ul_name, ul_index, ul_ip, ul_mtu = local_underlay(settings)
    except vxlan.VxlanError as exc:
        raise SetupError(str(exc)) from None
    mtu = mtu_of(settings, ul_mtu)
    cached = state.read(state_dir, network) or {}
    layout = layout_of(settings)
    client = client or client_of(settings)
    mine = lease.Record(layout.subnet, node, ul_ip, vtep_mac(node, network), machine=state.machine_id(state_dir))
    if listed is None:
        listed, _ = client.list_prefix(layout.directory)
    records, skipped = lease.parse_all(layout, listed)
    held = lease.claim(client, layout, mine, settings["leaseTTL"], last=cached.get("subnet", ""),
                       lease=int(cached.get("lease", 0)) if cached.get("node") == node else 0,
                       listed=(listed, records))
    try:
        return _realise(settings, state_dir, held, mine, records, skipped, started,
                        (ul_name, ul_index, ul_ip, mtu))
    except BaseException:
        if not any(r.subnet == held.subnet for r in records) and not _may_be_in_use(state_dir, network, held.subnet,
                                                                                     cached):
            _give_back(client, layout, held)  # claimed just now and no pod of this node is on it
        raise


def _may_be_in_use(state_dir: str, network: str, subnet, cached: dict) -> bool:
    """This node's pods may hold addresses of `subnet`: the state file names it (its record may
    have lapsed while the helper was down), or an address lease in it is on disk."""
    return cached.get("subnet") == str(subnet) or pods_on(state_dir, network, subnet)


def endpoints_on(state_dir: str, network: str) -> bool:
    """The node's store records endpoints on `network` (its pods, up or not yet deleted); an
    unreadable store counts as yes."""
    try:
        with Store(state_dir).read_only() as tx:
            return tx is not None and bool(tx.list_endpoints(network=network))
    except (StoreError, sqlite3.Error, OSError):
        return True


def pods_on(state_dir: str, network: str, subnet) -> bool:
    """An address lease of this node's pods in `subnet` is on disk (or the disk cannot tell)."""
    try:
        names = os.listdir(os.path.join(state.ipam_dir(state_dir), network))
    except FileNotFoundError:
        return False
    except OSError:
        return True  # (cannot tell: keep it)
    for name in names:
        try:
            if ipaddress.ip_address(name) in subnet:
                return True
        except ValueError:
            continue
    return False


def _give_back(client: etcd.Client, layout: lease.Layout, held: lease.Record) -> None:
    try:
        lease.release(client, layout, held)
    except etcd.EtcdError:
        pass  # (its lease expires by itself)


def _realise(settings: dict, state_dir: str, held: lease.Record, mine: lease.Record, records, skipped,
             started: float, underlay: tuple) -> Outcome:
    """The kernel side of a held lease (device and mesh), then the state file."""
    from pyroute2.netlink.exceptions import NetlinkError

    from ...linux import links, vxlan

    network = settings["name"]
    ul_name, ul_index, ul_ip, mtu = underlay
    node = mine.node
    _, vx_name = device_names(network)
    wanted, dropped = peers.select(records, node, held.subnet, ul_ip, mine.vtep_mac)
    others = [vxlan.Peer(str(r.subnet), r.vtep_ip, r.vtep_mac) for r in wanted]
    try:
        with links.rtnl() as ipr:
            index = vxlan.ensure_device(ipr, vx_name, settings["vni"], settings["port"], ul_ip, ul_index,
                                        mine.vtep_mac, mtu, str(held.subnet.network_address),
                                        alias_of(network, Store(state_dir).id()))
            changed, removed = vxlan.sync(ipr, index, others)
    except (vxlan.VxlanError, NetlinkError) as exc:
        raise SetupError(f"VXLAN device {vx_name}: {exc}") from None
    data = {
        "subnet": str(held.subnet), "lease": held.lease, "node": node, "vtepIP": ul_ip, "vtepMAC": mine.vtep_mac,
        "underlay": ul_name, "mtu": mtu, "confirmed": started, "settings": settings,
    }
    state.write(state_dir, network, data)
    return Outcome(data, skipped, changed, removed, [why for _, why in dropped], records)


ALIAS_PREFIX = "cnm-overlay:"


def alias_of(network: str, store_id: str) -> str:
    """The VXLAN device's alias: whose it is, the store's tag and the network (a sweep removes
    the devices of this store whose network it no longer holds a lease on)."""
    return f"{ALIAS_PREFIX}{store_id[:STORE_TAG_LEN]}:{network}"


def parse_alias(alias: str) -> tuple[str, str] | None:
    """(store tag, network) of a device alias of ours; None for anything else."""
    if not alias.startswith(ALIAS_PREFIX):
        return None
    tag, sep, network = alias[len(ALIAS_PREFIX):].partition(":")
    if not sep or len(tag) != STORE_TAG_LEN or not network:
        return None
    return tag, network
