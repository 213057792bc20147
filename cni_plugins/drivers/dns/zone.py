"""The names of one network as the store holds them now.

The server asks `Zone.current()` for every query. It costs a stat of the database file (one
made anew is opened again) and one read of SQLite's data_version while nothing changed; after any commit to the store (an ADD, a DEL, a sweep,
by this process or another) the network's records are read again. So a name answers as
soon as its ADD committed and is gone as soon as its DEL did, whoever served the command,
and nothing needs to tell the server (a notification could be lost; the store cannot).

On an overlay the names of the other nodes' pods come from remote.py (the helper follows
them in etcd); they are answered after the network's own, never instead of them.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field

from ...cnm.model import READY
from ...cnm.store import Reader
from . import remote
from .names import ENDPOINT_KEY, OPTIONS_KEY


@dataclass(frozen=True)
class Records:
    """What a network's server answers from (a snapshot)."""

    domain: str = ""
    upstreams: tuple[str, ...] | None = None  # None: the host's resolvers
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> addresses
    reverse: dict[str, str] = field(default_factory=dict)  # address -> the endpoint's first name
    listen: frozenset = frozenset()  # (address, device)

    @property
    def empty(self) -> bool:
        return not self.listen


def read(tx, network: str) -> Records:
    """The network's records in a store transaction (empty: no DNS, or no live endpoint)."""
    net = tx.get_network(network)
    opts = (net.options.get(OPTIONS_KEY) if net is not None else None) or {}
    if not opts:
        return Records()
    names: dict[str, list[str]] = {}
    reverse: dict[str, str] = {}
    listen = set()
    for record in _live_records(tx, network):
        listen.update((a, d) for a, d in record.get("listen", []))
        addresses = [str(ipaddress.ip_address(a)) for a in record.get("addresses", [])]
        for name in record.get("names", []):
            known = names.setdefault(name, [])
            known += [a for a in addresses if a not in known]
        if record.get("names"):
            for address in addresses:
                reverse.setdefault(address, record["names"][0])
    upstreams = opts.get("upstreams")
    return Records(opts["domain"], None if upstreams is None else tuple(upstreams),
                   {k: tuple(v) for k, v in names.items()}, reverse, frozenset(listen))


def endpoint_names(tx, network: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """endpoint id -> (names, addresses) of the network's live endpoints that have names ({}
    when the network has no DNS): what a node publishes for the other nodes of an overlay."""
    net = tx.get_network(network)
    if net is None or not net.options.get(OPTIONS_KEY):
        return {}
    found = {}
    for ep in tx.list_endpoints(network=network):
        record = ep.data.get(ENDPOINT_KEY)
        if ep.phase != READY or not ep.active or not record or not record.get("names"):
            continue
        addresses = tuple(str(ipaddress.ip_address(a)) for a in record.get("addresses", []))
        if addresses:
            found[ep.id] = (tuple(record["names"]), addresses)
    return found


def _live_records(tx, network: str):
    for ep in tx.list_endpoints(network=network):
        record = ep.data.get(ENDPOINT_KEY)
        if ep.phase == READY and ep.active and record:
            yield record


def merged(local: Records, others: remote.RemoteNames | None) -> Records:
    """The network's own records, then the other nodes' names it does not hold itself."""
    if others is None or not local.domain or not (others.names or others.reverse):
        return local
    names = dict(local.names)
    for label, addresses in others.names.items():
        names.setdefault(label, addresses)
    reverse = dict(local.reverse)
    for address, name in others.reverse.items():
        reverse.setdefault(address, name)
    return Records(local.domain, local.upstreams, names, reverse, local.listen)


class Zone:
    """One network's records, re-read after each change of the store."""

    def __init__(self, store_directory: str, network: str):
        self.network = network
        self._directory = store_directory
        self._reader = Reader(store_directory)
        self._file = _identity(self._reader.path)
        self._lock = threading.Lock()  # the server's UDP loop and its TCP threads share it
        self._version: int | None = None
        self._local = Records()
        self._remote: remote.RemoteNames | None = None
        self._remote_key = remote.key_of(store_directory, network)
        self._records = Records()

    def current(self) -> Records:
        with self._lock:
            file = _identity(self._reader.path)
            if file != self._file:  # the database file was lost, or made anew: read the one there now
                if file is None:
                    return Records()
                self._reader.close()
                self._reader, self._file, self._version = Reader(self._directory), file, None
            version = self._reader.version()
            others = remote.current(self._remote_key)
            if version != self._version:
                with self._reader.transaction() as tx:
                    self._local = read(tx, self.network)
                self._version = version
                self._records = merged(self._local, others)
            elif others is not self._remote:
                self._records = merged(self._local, others)
            self._remote = others
            return self._records

    def gone(self) -> bool:
        """The store was removed (its server would otherwise answer from the open file forever)."""
        return not os.path.exists(self._reader.path)

    def close(self) -> None:
        with self._lock:
            self._reader.close()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
