"""Operator views of the CNM store: `cnmctl network|sandbox|endpoint ...`.

Read-only: the store is opened with SQLite's mode=ro (a missing store is an empty
node, not created), nothing in the kernel changes. The JSON follows the spirit of
`docker network inspect` (CamelCase keys, a list of objects); what a network was
configured with comes from NETCONFPATH and from each endpoint's recorded ADD
(endpoint.data["cni"]: result, stdin config, CNI_ARGS), what the bridge driver
realised from endpoint.data (host veth, MAC, IPs).
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from ..cnm.model import Endpoint, Network, Sandbox
from ..cnm.store import Store, StoreError
from ..drivers import PLUGIN_TYPES
from ..drivers.base import RECORD_KEY
from ..liveness import ALIVE, DEAD, Judge
from ..runtime import conf as confmod
from ..runtime.errors import RunnerError


class NotFound(Exception):
    """The named object does not exist: exit 1."""


@dataclass
class Snapshot:
    """Everything the store holds, read in one transaction."""

    networks: list[Network] = field(default_factory=list)
    sandboxes: list[Sandbox] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    # Sandboxes made in an earlier boot: their netns exist no more (the plugins void those
    # identities at their next command; a read-only view cannot).
    earlier_boot: set[str] = field(default_factory=set)

    def network(self, name: str) -> Network | None:
        return next((n for n in self.networks if n.name == name), None)

    def sandbox(self, sandbox_id: str) -> Sandbox | None:
        return next((s for s in self.sandboxes if s.id == sandbox_id), None)

    def endpoints_of(self, *, network: str | None = None, sandbox: str | None = None) -> list[Endpoint]:
        return [e for e in self.endpoints
                if (network is None or e.network == network) and (sandbox is None or e.sandbox == sandbox)]


def snapshot(state_dir: str) -> Snapshot:
    try:
        with Store(state_dir).read_only() as tx:
            if tx is None:
                return Snapshot()
            sandboxes = tx.list_sandboxes()
            earlier = {sb.id for sb in sandboxes if not sb.is_host and tx.made_in_earlier_boot(sb)}
            return Snapshot(tx.list_networks(), sandboxes, tx.list_endpoints(), earlier)
    except (StoreError, sqlite3.Error) as exc:  # e.g. not a database, or a schema this cnmctl does not know
        raise RunnerError(f"cannot read store in {state_dir}: {exc}") from None


# ---- what an endpoint recorded --------------------------------------------------------------
def recorded(endpoint: Endpoint) -> tuple[dict, dict]:
    """(ADD result, ADD config) the controller recorded for the endpoint ({} when absent)."""
    rec = endpoint.data.get(RECORD_KEY) or {}
    try:
        config = json.loads(rec.get("stdin") or "{}")
    except ValueError:
        config = {}
    return rec.get("result") or {}, config if isinstance(config, dict) else {}


def _runtime_key(config: dict, key: str) -> Any:
    """runtimeConfig[key], case-insensitively (runtimes differ in casing)."""
    rc = config.get("runtimeConfig") or {}
    if not isinstance(rc, dict):
        return None
    return next((v for k, v in rc.items() if str(k).lower() == key.lower()), None)


def endpoint_view(ep: Endpoint) -> dict[str, Any]:
    result, config = recorded(ep)
    ifaces = result.get("interfaces") or []
    mine = [i for i, itf in enumerate(ifaces) if itf.get("name") == ep.ifname and itf.get("sandbox")]
    mac = ep.data.get("mac") or next((ifaces[i].get("mac") for i in mine), "")
    ips = result.get("ips") or ep.data.get("ips") or []
    # The container's own addresses: those on its interface, or unattributed ones.
    own = [ip for ip in ips if ip.get("interface") is None or ip.get("interface") in mine] or ips
    ports = _runtime_key(config, "portMappings") or ep.data.get("ports") or []
    return {
        "EndpointID": ep.id,
        "Network": ep.network,
        "ContainerID": ep.container_id,
        "Sandbox": ep.sandbox,
        "IfName": ep.ifname,
        "Driver": ep.driver,
        "Active": ep.active,
        "Phase": ep.phase,  # ready, or adding/deleting: a command is at it, or died at it
        "MacAddress": mac or "",
        "IPs": [ip.get("address", "") for ip in own],
        "Gateways": sorted({ip["gateway"] for ip in own if ip.get("gateway")}),
        "Ports": ports if isinstance(ports, list) else [],
        "HostVeth": ep.data.get("host_veth", ""),
        "Bridge": ep.data.get("bridge", ""),
        "Master": ep.data.get("master", ""),  # cnm-macvlan: the link it hangs off, and its mode
        "Mode": ep.data.get("mode", ""),
        "Names": (ep.data.get("dns") or {}).get("names", []),  # on a DNS-enabled network (drivers/dns)
        "CNIVersion": config.get("cniVersion", ""),
    }


# ---- networks -------------------------------------------------------------------------------
def configured_networks(conf_dir: str) -> dict[str, confmod.NetworkConfigList]:
    """Network lists in NETCONFPATH by name (first file wins, as libcni); unreadable files are
    skipped here (`cnmctl doctor` reports them)."""
    found: dict[str, confmod.NetworkConfigList] = {}
    try:
        paths = confmod.conf_files(conf_dir, confmod.LIST_EXTENSIONS) + confmod.conf_files(
            conf_dir, confmod.LEGACY_EXTENSIONS)
    except RunnerError:
        return found
    for path in paths:
        try:
            net = confmod.load_any(path)
        except (RunnerError, ValueError, KeyError, TypeError):
            continue
        found.setdefault(net.name, net)
    return found


def _ipam_of(conflist: confmod.NetworkConfigList | None, endpoints: list[Endpoint]) -> dict:
    plugins = list(conflist.plugins) if conflist else []
    plugins += [recorded(e)[1] for e in endpoints]
    return next((p["ipam"] for p in plugins if isinstance(p.get("ipam"), dict) and p["ipam"]), {})


def _subnets(ipam: dict, views: list[dict]) -> list[dict[str, str]]:
    """IPAM config entries (Subnet, Gateway) from host-local style ranges or subnet/gateway keys;
    a missing gateway is taken from an endpoint's result; subnets only seen on endpoints too."""
    entries: list[dict[str, str]] = []
    ranges = ipam.get("ranges") if isinstance(ipam.get("ranges"), list) else []
    flat = [r for rs in ranges if isinstance(rs, list) for r in rs if isinstance(r, dict)]
    if isinstance(ipam.get("subnet"), str):
        flat.append({"subnet": ipam["subnet"], "gateway": ipam.get("gateway")})
    for r in flat:
        if isinstance(r.get("subnet"), str) and all(e["Subnet"] != r["subnet"] for e in entries):
            entries.append({"Subnet": r["subnet"], "Gateway": r.get("gateway") or ""})
    seen_on_endpoints = []
    for view_ips in ((v["IPs"], v["Gateways"]) for v in views):
        for address in view_ips[0]:
            try:
                seen_on_endpoints.append((ipaddress.ip_interface(address).network, view_ips[1]))
            except ValueError:
                continue
    for net, gateways in seen_on_endpoints:
        entry = next((e for e in entries if _same_net(e["Subnet"], net)), None)
        if entry is None:
            entry = {"Subnet": str(net), "Gateway": ""}
            entries.append(entry)
        if not entry["Gateway"]:
            entry["Gateway"] = next((g for g in gateways if ipaddress.ip_address(g) in net), "")
    return entries


def _same_net(subnet: str, net) -> bool:
    try:
        return ipaddress.ip_network(subnet, strict=False) == net
    except ValueError:
        return False


def network_view(name: str, snap: Snapshot, configured: dict[str, confmod.NetworkConfigList]) -> dict[str, Any]:
    net = snap.network(name)
    conflist = configured.get(name)
    if net is None and conflist is None:
        raise NotFound(f"no network {name!r} in the store or in the configuration directory")
    endpoints = snap.endpoints_of(network=name)
    views = [endpoint_view(e) for e in endpoints]
    ipam = _ipam_of(conflist, endpoints)
    return {
        "Name": name,
        "Driver": net.driver if net else _driver_of(conflist),
        "Options": net.options if net else {},
        "Data": net.data if net else {},
        "IPAM": {"Type": ipam.get("type", ""), "Config": _subnets(ipam, views)},
        "ConfigFile": conflist.source if conflist else "",
        "CNIVersion": conflist.cni_version if conflist else "",
        "Plugins": conflist.types if conflist else [],
        "InStore": net is not None,
        "Endpoints": views,
    }


def _driver_of(conflist: confmod.NetworkConfigList | None) -> str:
    for plugin_type in conflist.types if conflist else []:
        if plugin_type in PLUGIN_TYPES:
            return PLUGIN_TYPES[plugin_type]
    return ""


def network_names(snap: Snapshot, configured: dict) -> list[str]:
    return sorted({n.name for n in snap.networks} | set(configured))


# ---- sandboxes ------------------------------------------------------------------------------
def sandbox_state(sb: Sandbox, earlier_boot: bool = False) -> str:
    """"host", "ready", "gone" or "unknown" (cannot be judged from here): the judgement of
    the node-wide reconcile (`cnmctl gc`, cni_plugins/liveness.py)."""
    if sb.is_host:
        return "host"
    if earlier_boot:
        return "gone"
    state = Judge().judge(sb).state
    return {ALIVE: "ready", DEAD: "gone"}.get(state, state)


def sandbox_view(sb: Sandbox, snap: Snapshot) -> dict[str, Any]:
    endpoints = snap.endpoints_of(sandbox=sb.id)
    return {
        "Id": sb.id,
        "State": sandbox_state(sb, sb.id in snap.earlier_boot),
        "Netns": sb.netns,
        "Pin": sb.pin,
        "NetnsIdentity": f"{sb.ns_dev}:{sb.ns_ino}",
        "Members": sorted({e.container_id for e in endpoints if e.active}),
        "Endpoints": [endpoint_view(e) for e in endpoints],
        "Data": sb.data,
    }


def find_sandbox(key: str, snap: Snapshot) -> Sandbox:
    """By sandbox id, else the sandbox a container (active, else any) is a member of."""
    sb = snap.sandbox(key)
    if sb is None:
        for active in (True, False):
            ep = next((e for e in snap.endpoints if e.container_id == key and e.active == active), None)
            if ep is not None and snap.sandbox(ep.sandbox) is not None:
                return snap.sandbox(ep.sandbox)
        raise NotFound(f"no sandbox {key!r} (neither a sandbox id nor a member container)")
    return sb
