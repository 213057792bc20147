"""Per-node subnet leases in etcd (as flannel's): one `hostSubnetLength` subnet of the
network's `subnet` per node, claimed with a create-if-absent transaction and bound to an etcd
lease the resident helper keeps alive.

Layout under the store's prefix, per network:
    <prefix>/overlay/<network>/subnets/<a.b.c.d>-<len>  ->  {"node", "vtepIP", "vtepMAC", "machine"}
The key names the subnet, so etcd itself guarantees that no two nodes hold the same one:
a create succeeds only while the key is absent, and the key goes only with its lease.

A node takes back its own subnet: first the record that still names it (its lease may be
gone or unknown: the record is re-bound to a new lease by compare-and-swap), else the subnet it
held last (kept on disk by the caller) when it is free, else a free one. A node renamed
(nodeName changed, same machine) keeps its subnet under the new name: a record is its own also
when it carries the node's `machine` id (random, made once per node store: a name or an
address alone proves nothing) and its VTEP IP; any other such record is released, so one VTEP
is never claimed by two records. A lease granted for a bind that then fails is revoked. Records are read with
suspicion: whatever does not parse, lies outside the network's subnet or is too big is
skipped (and reported) — never trusted, never fatal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import ipaddress
import json
import re
from dataclasses import dataclass

from . import etcd

MAX_RECORD = 1024  # bytes: a record is ~100; anything bigger is not ours
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MACHINE_RE = re.compile(r"^[0-9a-f]{32}$")


class Exhausted(Exception):
    """Every subnet of the network is held by another node."""


class Conflict(Exception):
    """This node's name holds a live lease from another machine (two machines share the name)."""


@dataclass(frozen=True)
class Record:
    """One node's lease: its subnet and its VXLAN endpoint."""

    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    node: str
    vtep_ip: str
    vtep_mac: str
    lease: int = 0  # the etcd lease the key is bound to
    revision: int = 0  # the key's mod_revision
    machine: str = ""  # the id of the node store that wrote it ("": a record from before ids)
    created: int = dataclasses.field(default=0, compare=False)  # the key's create_revision

    def value(self) -> bytes:
        data = {"node": self.node, "vtepIP": self.vtep_ip, "vtepMAC": self.vtep_mac}
        if self.machine:
            data["machine"] = self.machine
        return json.dumps(data, sort_keys=True).encode()

    def with_lease(self, lease: int, revision: int = 0) -> "Record":
        return dataclasses.replace(self, lease=lease, revision=revision)

    def proven_of(self, mine: "Record") -> bool:
        """Written by `mine`'s machine (its id and its VTEP IP: a cloned store on another
        machine has the id, not the address) under another node name: `mine` before a rename."""
        return bool(self.machine) and self.machine == mine.machine and self.vtep_ip == mine.vtep_ip \
            and self.node != mine.node


@dataclass(frozen=True)
class Layout:
    """Where one network's leases live, and what a valid one looks like."""

    prefix: str  # the store's prefix, e.g. "/cnm"
    network: str
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    host_length: int

    @property
    def directory(self) -> bytes:
        return f"{self.prefix.rstrip('/')}/overlay/{self.network}/subnets/".encode()

    def key(self, subnet) -> bytes:
        return self.directory + f"{subnet.network_address}-{subnet.prefixlen}".encode()

    def subnets(self):
        return self.subnet.subnets(new_prefix=self.host_length)

    def count(self) -> int:
        return 1 << (self.host_length - self.subnet.prefixlen)

    def parse(self, kv: etcd.KeyValue) -> tuple[Record | None, str]:
        """The record `kv` holds, or (None, why it is not one)."""
        if not kv.key.startswith(self.directory):
            return None, "outside the network's directory"
        name = kv.key[len(self.directory):].decode("utf-8", errors="replace")
        address, _, length = name.partition("-")
        try:
            subnet = ipaddress.ip_network(f"{address}/{length}")
        except ValueError:
            return None, f"key {name[:100]!r} does not name a subnet"
        inside = subnet.version == self.subnet.version and subnet.subnet_of(self.subnet)
        if not inside or subnet.prefixlen != self.host_length:
            return None, f"subnet {subnet} is not a /{self.host_length} of {self.subnet}"
        if kv.key != self.key(subnet):  # e.g. "-024": a second key for one subnet would let two nodes hold it
            return None, f"key {name[:100]!r} is not the subnet's own key {self.key(subnet).decode()!r}"
        if len(kv.value) > MAX_RECORD:
            return None, f"record of {len(kv.value)} bytes (at most {MAX_RECORD})"
        try:
            data = json.loads(kv.value)
            node, vtep_ip, vtep_mac = data["node"], data["vtepIP"], data["vtepMAC"]
        except (ValueError, TypeError, KeyError, RecursionError):  # ("[[[[...": deeper than the stack)
            return None, "not a JSON record with node, vtepIP and vtepMAC"
        if not (isinstance(node, str) and isinstance(vtep_ip, str) and isinstance(vtep_mac, str)) or not node:
            return None, "node, vtepIP and vtepMAC must be strings"
        machine = data.get("machine", "")
        if not isinstance(machine, str) or (machine and not MACHINE_RE.match(machine)):
            return None, "machine must be 32 hex digits"
        try:
            vtep = ipaddress.ip_address(vtep_ip)
        except ValueError:
            return None, f"vtepIP {vtep_ip!r} is not an address"
        if vtep.version == self.subnet.version and vtep in self.subnet:
            return None, f"vtepIP {vtep} lies in the overlay's own subnet {self.subnet}"
        if vtep.version != 4:  # the underlay is IPv4: the kernel refuses an IPv6 FDB entry, failing the whole mesh
            return None, f"vtepIP {vtep} is not an IPv4 address"
        if vtep.is_multicast or vtep.is_unspecified or vtep.is_loopback or vtep == ipaddress.IPv4Address(
                "255.255.255.255"):
            return None, f"vtepIP {vtep} is not a unicast address"
        if not MAC_RE.match(vtep_mac) or int(vtep_mac[:2], 16) & 1:
            return None, f"vtepMAC {vtep_mac!r} is not a unicast MAC"
        return Record(subnet, node, str(vtep), vtep_mac, kv.lease, kv.mod_revision, machine, kv.create_revision), ""


def read_all(client: etcd.Client, layout: Layout) -> tuple[list[Record], list[str], int]:
    """Every valid record of the network; the reasons the others were skipped; the revision."""
    kvs, revision = client.list_prefix(layout.directory)
    records, skipped = parse_all(layout, kvs)
    return records, skipped, revision


def parse_all(layout: Layout, kvs) -> tuple[list[Record], list[str]]:
    records, skipped = [], []
    for kv in kvs:
        record, why = layout.parse(kv)
        if record is None:
            skipped.append(f"{printable_key(kv.key)}: {why}")
        else:
            records.append(record)
    return records, skipped


def printable_key(key: bytes) -> str:
    """A key as a log line may show it: a hostile key's newlines or escapes must not forge lines."""
    return repr(key[:200].decode("utf-8", errors="replace"))[1:-1]


def claim(client: etcd.Client, layout: Layout, mine: Record, ttl: int, last: str = "",
          lease: int = 0, listed: tuple[list, list[Record]] | None = None) -> Record:
    """This node's lease (`mine` gives node, vtepIP, vtepMAC and machine; its subnet is
    ignored): its own record taken back, else `last` (the subnet it held before) if free, else
    a free one. `lease`: the etcd lease it believes it holds (reused while alive); `listed`:
    (key-values, their records) the caller just listed, for the first round. Raises
    Exhausted, Conflict, etcd.EtcdError."""
    grants = _Grants(client, ttl)
    held = None
    try:
        held = _claim(client, layout, mine, last, lease, grants, listed)
        return held
    finally:
        grants.settle(held.lease if held is not None else 0)


def _claim(client: etcd.Client, layout: Layout, mine: Record, last: str, lease: int, grants: "_Grants",
           listed: tuple[list, list[Record]] | None) -> Record:
    for _ in range(3 * layout.count() + 10):  # each round loses only to another node's write
        if listed is not None:
            (kvs, records), listed = listed, None
        else:
            kvs, _ = client.list_prefix(layout.directory)
            records, _ = parse_all(layout, kvs)
        own = [r for r in records if r.node == mine.node or r.proven_of(mine)]
        if own:
            record = min(own, key=lambda r: (r.node != mine.node, str(r.subnet) != last, r.revision))
            kept = _adopt(client, layout, record, mine, lease, grants)
            if kept is None:
                continue
            for stale in own:  # this machine under a name it no longer has: one VTEP, one record
                if stale.subnet != kept.subnet and stale.proven_of(mine):
                    _release_stale(client, layout, stale, kept.lease)
            return kept
        taken = {kv.key for kv in kvs}  # (a key that is not a valid record still holds its subnet)
        # (the first few free ones are enough to choose from: a /8 holds 65536 /24s)
        free = list(itertools.islice((s for s in layout.subnets() if layout.key(s) not in taken), 64))
        if not free:
            raise Exhausted(f"every /{layout.host_length} of {layout.subnet} is held by another node")
        subnet = _pick(free, mine.node, last)
        if not _lives_long_enough(client, lease, grants.ttl):
            lease = grants.new()
        record = dataclasses.replace(mine, subnet=subnet, lease=lease)
        created, current = client.create(layout.key(subnet), record.value(), lease)
        if created:
            return record.with_lease(lease, client.get(layout.key(subnet)).mod_revision)
        if current is not None:
            theirs, _ = layout.parse(current)
            # Our own create, retried, is on our lease and VTEP; another machine's of our name
            # (it chose the same subnet) is not ours: the next round's _adopt tells.
            if theirs is not None and theirs.lease == lease and theirs.value() == record.value():
                return theirs
    raise etcd.EtcdError(f"no subnet of {layout.subnet} could be claimed: every try lost to another node")


class _Grants:
    """The leases one claim granted. One its record does not end on would live out its TTL in
    etcd for nothing (one per failed bind): it is revoked, best effort."""

    def __init__(self, client: etcd.Client, ttl: int):
        self.client = client
        self.ttl = ttl
        self.ids: set[int] = set()

    def new(self) -> int:
        lease = self.client.grant(self.ttl)
        self.ids.add(lease)
        return lease

    def drop(self, lease: int) -> None:
        if lease in self.ids:
            self.ids.discard(lease)
            try:
                self.client.revoke(lease)
            except etcd.EtcdError:
                pass  # (it expires by itself)

    def settle(self, kept: int) -> None:
        for lease in list(self.ids - {kept}):
            self.drop(lease)


def _adopt(client: etcd.Client, layout: Layout, record: Record, mine: Record, lease: int,
           grants: _Grants) -> Record | None:
    """Keep this node's existing record: on its own lease while that lives (rewritten only if
    the VTEP, the name or the machine id changed), else re-bound to a live lease
    (compare-and-swap: None when it moved)."""
    wanted = dataclasses.replace(mine, subnet=record.subnet, lease=0, revision=0)
    ttl = client.keepalive(record.lease) if record.lease else 0
    alive = ttl > 0
    if alive and record.lease != lease and record.vtep_ip != mine.vtep_ip:
        # A live lease we do not hold, for another VTEP: a second machine with our name (a
        # cloned machine-id, a copied nodeName). Taking it over would put both on one subnet.
        raise Conflict(f"node name {mine.node!r} holds subnet {record.subnet} from VTEP {record.vtep_ip} on a "
                       f"live lease this node does not hold: two machines share the name (set nodeName), or "
                       f"wait for that lease to expire")
    if alive and ttl < grants.ttl:
        # Granted for a shorter leaseTTL than the one configured now: the node would trust its
        # subnet (fresh for TTL/2, kept alive every TTL/3) after etcd let it go. Re-bound below.
        alive = False
    if alive and wanted.value() == record.value():
        return record
    if not alive:
        lease = lease if lease != record.lease and _lives_long_enough(client, lease, grants.ttl) else grants.new()
    else:
        lease = record.lease
    if not client.replace(layout.key(record.subnet), record.revision, wanted.value(), lease):
        grants.drop(lease)  # (only if granted here: never the lease the node holds)
        return None
    return wanted.with_lease(lease, client.get(layout.key(record.subnet)).mod_revision)


def _lives_long_enough(client: etcd.Client, lease: int, ttl: int) -> bool:
    """`lease` is alive and was granted for at least `ttl` seconds (refreshed by asking)."""
    return bool(lease) and client.keepalive(lease) >= ttl


def _release_stale(client: etcd.Client, layout: Layout, record: Record, keep: int) -> None:
    """Delete a record of this machine's former name (only while it is still that one) and
    revoke its lease unless the node's record now stands on it."""
    key = layout.key(record.subnet)
    answer = client.call("/v3/kv/txn", {
        "compare": [{"key": etcd.b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(record.revision)}],
        "success": [{"request_delete_range": {"key": etcd.b64(key)}}],
    })
    if answer.get("succeeded") and record.lease and record.lease != keep:
        try:
            client.revoke(record.lease)
        except etcd.EtcdError:
            pass  # (it expires by itself; the record is gone already)


def _pick(free: list, node: str, last: str):
    """`last` if free; else a free subnet chosen by the node's name, so that nodes claiming at
    once mostly try different ones (a collision only costs another round)."""
    for subnet in free:
        if str(subnet) == last:
            return subnet
    digest = int.from_bytes(hashlib.sha256(node.encode()).digest()[:8], "big")
    return free[digest % len(free)]


def release(client: etcd.Client, layout: Layout, record: Record) -> None:
    """Give the subnet up (only while the key still holds this node's record)."""
    current = client.get(layout.key(record.subnet))
    if current is None:
        return
    theirs, _ = layout.parse(current)
    if theirs is not None and theirs.node == record.node:
        client.call("/v3/kv/txn", {
            "compare": [{"key": etcd.b64(current.key), "target": "MOD", "result": "EQUAL",
                         "mod_revision": str(current.mod_revision)}],
            "success": [{"request_delete_range": {"key": etcd.b64(current.key)}}],
        })
        if current.lease:
            client.revoke(current.lease)


def node_identity(configured: str = "", machine_id: str = "/etc/machine-id") -> str:
    """`nodeName`, else the machine id (a restarted node is the same node)."""
    if configured:
        return configured
    try:
        with open(machine_id, encoding="ascii") as f:
            ident = f.read().strip()
    except (OSError, UnicodeDecodeError):
        ident = ""
    if not ident:
        raise ValueError(f"no nodeName configured and {machine_id} is empty or unreadable")
    return ident
