"""The config of a network's names and the names of its endpoints (stdlib only: this runs
in every ADD of a DNS-enabled network, in-process too; the server's modules are not imported).

What the server needs is recorded in the store, so a server started later (another helper,
after a restart) answers from the records alone:
- network.options[OPTIONS_KEY] = {"domain": ..., "upstreams": [...] or None (the host's)} (immutable while
  endpoints are attached, as every network option);
- endpoint.data[ENDPOINT_KEY] = {"names": [...], "addresses": [...], "listen": [[address,
  device], ...]}: the endpoint's names, its addresses, and where its network's server listens.
A small file per store under <run dir>/dns/ tells a helper that starts which stores to serve.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re

from ...cni.errors import INVALID_CONFIG, CNIError

OPTIONS_KEY = "dns"
ENDPOINT_KEY = "dns"
DEFAULT_TLD = "cnm"
REGISTRY_DIR = "dns"  # under the run dir: one file per store a helper should serve names of
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE | re.ASCII)  # ASCII: no Kelvin sign as k
_listener = None  # on_commit(): the resident helper's name service


def valid_label(label: str) -> bool:
    return bool(_LABEL.fullmatch(label))


def valid_domain(name: str) -> bool:
    name = name.rstrip(".")
    return 0 < len(name) <= 253 and all(valid_label(part) for part in name.split("."))


def default_domain(network: str) -> str:
    """`<network>.cnm`, the network name made a DNS label (CNI allows `_` and `.` in it)."""
    label = re.sub(r"[^a-z0-9-]+", "-", network.lower()).strip("-")[:63].strip("-") or "net"
    return f"{label}.{DEFAULT_TLD}"


def options(request) -> dict:
    """{OPTIONS_KEY: ...} when the config enables names, else {} (so a network without them
    has exactly the options it had before names existed). CNIError 7 naming the key."""
    conf = request.config
    enabled = conf.get("dnsEnabled", False)
    if not isinstance(enabled, bool):
        raise CNIError(INVALID_CONFIG, "invalid dnsEnabled", f"must be true or false, not {enabled!r}")
    for key in ("dnsDomain", "dnsUpstreams"):
        if key in conf and not enabled:
            raise CNIError(INVALID_CONFIG, f"invalid {key}", f"{key} needs \"dnsEnabled\": true")
    if not enabled:
        return {}
    domain = conf.get("dnsDomain", None)
    if domain is None:
        domain = default_domain(request.network)
    elif not isinstance(domain, str) or not valid_domain(domain):
        raise CNIError(INVALID_CONFIG, "invalid dnsDomain",
                       f"{domain!r} is not a DNS name (labels of letters, digits and '-', each 1-63 characters)")
    # Absent: the host's resolvers (None); a list, even empty: exactly those (none: no forwarding).
    upstreams = conf.get("dnsUpstreams", None)
    if upstreams is not None and not isinstance(upstreams, list):
        raise CNIError(INVALID_CONFIG, "invalid dnsUpstreams", "must be a list of IP addresses")
    checked = None if upstreams is None else []
    for item in upstreams or []:
        try:
            checked.append(str(ipaddress.ip_address(item)))
        except (ValueError, TypeError):
            raise CNIError(INVALID_CONFIG, "invalid dnsUpstreams", f"{item!r} is not an IP address") from None
    return {OPTIONS_KEY: {"domain": domain.rstrip(".").lower(), "upstreams": checked}}


def requested_names(request) -> tuple[list[str], list[str]]:
    """(valid names, invalid ones) of the endpoint an ADD makes: its aliases on this network
    (runtimeConfig.aliases, podman's `aliases` capability), K8S_POD_NAME, CNM_NAME (cnmctl run)."""
    wanted: list[str] = []
    aliases = request.runtime_config("aliases") or {}
    if isinstance(aliases, dict):  # runtime_config folds keys to lower case
        mine = aliases.get(request.network.lower(), [])
        if isinstance(mine, list):
            wanted += [a for a in mine if isinstance(a, str)]
    for key in ("K8S_POD_NAME", "CNM_NAME"):
        if request.cni_args.get(key):
            wanted.append(request.cni_args[key])
    good, bad, seen = [], [], set()
    for name in wanted:
        folded = name.lower()
        if folded in seen:
            continue
        seen.add(folded)
        (good if valid_label(name) else bad).append(folded if valid_label(name) else name)
    return good, bad


def attach(driver, ctx, network, endpoint, result) -> None:
    """After a join on a network with names: record the endpoint's names and where the server
    listens, and give the result its `dns` block. A driver with no gateway cannot serve names
    (CNIError 7: the ADD is undone)."""
    opts = network.options.get(OPTIONS_KEY)
    if not opts:
        return
    listen = driver.name_server_addresses(ctx, network, endpoint)
    if not listen:
        raise CNIError(INVALID_CONFIG, "invalid dnsEnabled",
                       f"{driver.name} endpoints on network {network.name!r} have no gateway on the host for the "
                       f"name server to listen on (a bridge needs \"isGateway\": true and IPAM)")
    names, invalid = requested_names(ctx.request)
    if invalid:
        from ...cni import log

        log.message(ctx.request.env, ctx.request.config, "warning",
                    f"names {invalid} are not DNS labels: ignored", command="ADD")
    addresses = [str(ipaddress.ip_interface(ip.address).ip) for ip in result.ips]
    endpoint.data[ENDPOINT_KEY] = {"names": names, "addresses": addresses,
                                   "listen": [[address, device] for address, device in listen]}
    nameservers = []
    for address, _ in listen:
        if address not in nameservers:
            nameservers.append(address)
    result.dns.nameservers = nameservers
    result.dns.search = [opts["domain"]]
    result.dns.domain = ""


def refuse_shared_gateway(tx, network, endpoint) -> None:
    """In the ADD's commit: another DNS-enabled network whose endpoints have this one's name
    server address on the same bridge is refused (CNIError 7): one address and port answer for
    one network (two servers there would each get a share of every network's queries)."""
    record = endpoint.data.get(ENDPOINT_KEY)
    if not record:
        return
    mine = {tuple(item) for item in record["listen"]}
    for other in tx.list_networks():
        if other.name == network.name or not other.options.get(OPTIONS_KEY) or \
                other.options.get("bridge") != network.options.get("bridge"):
            continue
        for ep in tx.list_endpoints(network=other.name):
            shared = mine & {tuple(item) for item in (ep.data.get(ENDPOINT_KEY) or {}).get("listen", [])}
            if shared:
                address, device = sorted(shared)[0]
                raise CNIError(INVALID_CONFIG, "invalid dnsEnabled",
                               f"network {other.name!r} serves names on {address} ({device}) already: two "
                               f"DNS-enabled networks cannot share a bridge's gateway")


def registry_path(env, store_directory: str) -> str:
    from ...cnm.pins import run_dir

    tag = hashlib.sha256(os.path.abspath(store_directory).encode()).hexdigest()[:16]
    return os.path.join(run_dir(env), REGISTRY_DIR, tag + ".json")


def register(env, store_directory: str, netns_identity) -> None:
    """Note the store for a helper that starts later (once per store and namespace)."""
    path = registry_path(env, store_directory)
    entry = {"store": os.path.abspath(store_directory), "netns": [netns_identity.dev, netns_identity.ino]}
    try:
        with open(path) as f:
            if json.load(f) == entry:
                return
    except (OSError, ValueError):
        pass
    from ...linux import fs

    fs.make_dirs(os.path.dirname(path), 0o700)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(entry, f)
    os.replace(tmp, path)


def registered(env) -> list[dict]:
    directory = os.path.join(os.path.dirname(registry_path(env, "/")))
    entries = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return entries
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                entries.append(json.load(f))
        except (OSError, ValueError):
            continue
    return entries


def on_commit(callback) -> None:
    """Have `callback(node, network_name, listen)` called in the command's thread (and netns)
    after an ADD of a DNS-enabled network committed, before the ADD answers: the resident
    helper's name service makes sure the network's server listens. None stops it."""
    global _listener
    _listener = callback


def committed(node, request, network, endpoint) -> None:
    """After the ADD's commit: the store noted for later helpers, the running one told."""
    record = endpoint.data.get(ENDPOINT_KEY)
    if not record or not network.options.get(OPTIONS_KEY):
        return
    from ...linux import netns

    try:
        register(request.env, node.store.directory, netns.own_identity())
    except OSError as exc:
        from ...cni import log

        log.message(request.env, request.config, "warning", f"store not noted for the name server: {exc}",
                    command="ADD")
    if _listener is not None:
        _listener(node, network.name, [tuple(item) for item in record["listen"]])
