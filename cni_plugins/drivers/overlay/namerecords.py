"""Pod names of an overlay network in etcd: how a pod on one node resolves the pods of the
others (names on a network: drivers/dns/).

Layout, beside the subnet leases (lease.py), per network:
    <prefix>/overlay/<network>/names/<a.b.c.d>-<len>/<endpoint tag>  ->  {"node", "names", "addresses"}
One key per endpoint that has names, under the subnet of the node holding the endpoint,
written only by that node's resident helper and bound to the same etcd lease as the node's
subnet record: a node that vanishes loses its names with its lease. An ADD never writes
here (no etcd on the hot path); the helper publishes what the node's store holds.

Read with suspicion: a key that is not under a subnet's own directory, a value too big or not
JSON, a name that is not a DNS label, an address outside the key's subnet: skipped, with why.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass

from ..dns.names import valid_label
from . import etcd
from .lease import Layout

MAX_RECORD = 4096  # bytes: a record with a few names is ~150
MAX_NAMES = 32  # per endpoint (aliases, the pod name)
DIRECTORY = b"names/"


@dataclass(frozen=True)
class NameRecord:
    """One endpoint's names, published by the node holding `subnet`."""

    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    node: str
    names: tuple[str, ...]
    addresses: tuple[str, ...]
    lease: int = 0


def network_directory(layout: Layout) -> bytes:
    """Everything of one network (subnet leases and names): the range the helper lists and
    watches."""
    return f"{layout.prefix.rstrip('/')}/overlay/{layout.network}/".encode()


def names_directory(layout: Layout) -> bytes:
    return network_directory(layout) + DIRECTORY


def subnet_directory(layout: Layout, subnet) -> bytes:
    return names_directory(layout) + f"{subnet.network_address}-{subnet.prefixlen}/".encode()


def key(layout: Layout, subnet, endpoint_id: str) -> bytes:
    # (an endpoint id is long and of any characters: its digest names the key)
    return subnet_directory(layout, subnet) + hashlib.sha256(endpoint_id.encode()).hexdigest()[:24].encode()


def value(node: str, names, addresses) -> bytes:
    """What parse() takes back on every node: at most MAX_NAMES names (the first ones) and
    MAX_RECORD bytes (names dropped from the end; the node name, only informative, cut) — an
    endpoint with more aliases than that would otherwise be refused whole by the other nodes."""
    names = list(names)[:MAX_NAMES]
    node = node[:253]
    while True:
        data = json.dumps({"node": node, "names": names, "addresses": list(addresses)}, sort_keys=True).encode()
        if len(data) <= MAX_RECORD or len(names) <= 1:
            return data
        names.pop()


def is_name_key(layout: Layout, raw_key: bytes) -> bool:
    return raw_key.startswith(names_directory(layout))


def parse(layout: Layout, kv: etcd.KeyValue) -> tuple[NameRecord | None, str]:
    """The record `kv` holds, or (None, why it is not one)."""
    base = names_directory(layout)
    if not kv.key.startswith(base):
        return None, "outside the network's names directory"
    rest = kv.key[len(base):].decode("utf-8", errors="replace")
    subnet_name, sep, tag = rest.partition("/")
    address, _, length = subnet_name.partition("-")
    try:
        subnet = ipaddress.ip_network(f"{address}/{length}")
    except ValueError:
        return None, f"key {rest[:100]!r} does not name a subnet"
    if not (subnet.version == layout.subnet.version and subnet.subnet_of(layout.subnet)
            and subnet.prefixlen == layout.host_length):
        return None, f"subnet {subnet} is not a /{layout.host_length} of {layout.subnet}"
    if not sep or not tag or "/" in tag or not kv.key.startswith(subnet_directory(layout, subnet)):
        return None, f"key {rest[:100]!r} is not <subnet>/<endpoint>"
    if len(kv.value) > MAX_RECORD:
        return None, f"record of {len(kv.value)} bytes (at most {MAX_RECORD})"
    try:
        data = json.loads(kv.value)
        node, names, addresses = data["node"], data["names"], data["addresses"]
    except (ValueError, TypeError, KeyError, RecursionError):  # ("[[[[...": deeper than the stack)
        return None, "not a JSON record with node, names and addresses"
    if not isinstance(node, str) or not isinstance(names, list) or not isinstance(addresses, list):
        return None, "node must be a string, names and addresses lists"
    if not names or len(names) > MAX_NAMES or not all(isinstance(n, str) and valid_label(n) for n in names):
        return None, f"names must be 1 to {MAX_NAMES} DNS labels"
    parsed = []
    for item in addresses:
        try:
            ip = ipaddress.ip_address(item)
        except (ValueError, TypeError):
            return None, f"address {str(item)[:60]!r} is not an IP address"
        if ip.version != subnet.version or ip not in subnet:
            return None, f"address {ip} lies outside the key's subnet {subnet}"
        parsed.append(str(ip))
    if not parsed:
        return None, "no address"
    return NameRecord(subnet, node, tuple(n.lower() for n in names), tuple(parsed), kv.lease), ""
