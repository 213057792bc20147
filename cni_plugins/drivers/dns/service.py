"""The name servers of a resident helper: one per (network namespace, store, network).

An ADD that the helper serves (names.on_commit, in the command's thread and netns) makes sure
its network's server listens before the ADD answers. The stores noted under <run dir>/dns/ in
the helper's own namespace (names.register) are served at start, so names answer again after
a restart without any command, and watched afterwards (SQLite's data_version, once a SWEEP_S):
a network an ADD named without the helper (one that ran in-process: the helper was busy,
of another build, ...) gets its server, a server whose thread died or whose bridge was made
again is made anew. A server listens on the gateways of all its network's endpoints (an
endpoint made before the conflist's ranges changed keeps its name server), and stops by
itself once its network has no endpoint left.
"""

from __future__ import annotations

import os
import threading

from ...cnm.store import DB_NAME, Reader
from ...linux import netns
from . import names
from .server import NetworkServer
from .zone import read

SWEEP_S = 1.0  # how often the noted stores are checked for networks without their server


class NameService:
    def __init__(self, log, env):
        self.log = log
        self.env = env
        self._servers: dict[tuple, NetworkServer] = {}
        self._lock = threading.Lock()
        self._readers: dict[str, Reader] = {}  # store directory -> a connection kept (under _lock)
        self._seen: dict[str, int] = {}  # store directory -> data_version last swept
        self._home = netns.own_identity()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def ensure(self, node, network: str, listen) -> None:
        """names.on_commit's callback. Never raises: an ADD does not fail for its names."""
        try:
            self._ensure(node.store.directory, network, listen)
        except Exception as exc:  # noqa: BLE001
            self.log(f"dns {network}: no name server on {sorted(listen)}: {type(exc).__name__}: {exc}")

    def _ensure(self, directory: str, network: str, listen, exact: bool = False) -> None:
        """A server of `network` in this thread's netns that listens on `listen` (`exact`: on
        nothing else; else at least there, and on every gateway its endpoints have)."""
        listen = frozenset(tuple(item) for item in listen)
        ident = netns.own_identity()
        key = (ident.dev, ident.ino, directory, network)
        with self._lock:
            old = self._servers.get(key)
            if old is not None and old.current(listen if exact else None) and (exact or listen <= old.listen):
                return
            if not exact:
                listen |= _records(directory, network).listen
            if not listen:
                return
            server = NetworkServer(directory, network, listen, self.own_addresses, self.log, on_idle=self._idle)
            server.key = key
            self._servers[key] = server
            server.start()
        if old is not None:  # after the new one is bound (SO_REUSEPORT): no moment without a server
            old.stop()
        self.log(f"dns {network}: serving on {', '.join(a for a, _ in sorted(listen))} (store {directory})")

    def _reader(self, directory: str) -> Reader:
        reader = self._readers.get(directory)
        if reader is None:
            reader = self._readers[directory] = Reader(directory)
        return reader

    def own_addresses(self) -> set[str]:
        """Where the servers listen (never an upstream); read without the lock (forwarding)."""
        return {address for server in list(self._servers.values()) for address, _ in server.listen}

    def _idle(self, server: NetworkServer) -> None:
        """A server found its network without endpoints: it stops (an ADD meanwhile makes a new
        one: ensure() runs after the ADD's commit, and this re-reads under the same lock)."""
        with self._lock:
            if self._servers.get(server.key) is not server:
                return
            try:
                empty = server.zone.gone() or server.zone.current().empty  # re-read if anything committed
            except Exception:  # noqa: BLE001 -- the store is gone
                empty = True
            if not empty:
                return
            del self._servers[server.key]
        server.stop()
        self.log(f"dns {server.network}: no endpoints left, stopped")

    # ---- the stores noted for this namespace ----------------------------------------------
    def start(self) -> None:
        """Serve the noted stores now (before the helper takes a request), then watch them."""
        self.sweep()
        self._sweeper = threading.Thread(target=self._sweep_forever, name="cnmd-dns-sweep", daemon=True)
        self._sweeper.start()

    def _sweep_forever(self) -> None:
        while not self._stop.wait(SWEEP_S):
            try:
                self.sweep()
            except Exception as exc:  # noqa: BLE001 -- the next sweep tries again
                self.log(f"dns: sweep failed: {type(exc).__name__}: {exc}")

    def sweep(self) -> None:
        """Every DNS-enabled network of a noted store that changed since the last sweep has its
        server, listening where its endpoints' gateways are; a server of this namespace whose
        thread died or whose bridge is another now is made again."""
        if netns.own_identity() != self._home:
            return  # servers are made in the thread's netns: only ever from the helper's own
        for directory in self._noted():
            try:
                version = self._version(directory)
                if version is None or version == self._seen.get(directory):
                    continue
                with self._lock:
                    reader = self._reader(directory)
                    with reader.transaction() as tx:
                        found = [(net.name, read(tx, net.name)) for net in tx.list_networks()
                                 if net.options.get(names.OPTIONS_KEY)]
                self._seen[directory] = version
            except Exception as exc:  # noqa: BLE001 -- a store that cannot be read now
                self.log(f"dns: cannot read store {directory}: {type(exc).__name__}: {exc}")
                continue
            for network, records in found:
                if records.empty:
                    continue  # a server left running stops by itself
                try:
                    self._ensure(directory, network, records.listen, exact=True)
                except Exception as exc:  # noqa: BLE001
                    self.log(f"dns {network}: no name server: {type(exc).__name__}: {exc}")
        with self._lock:
            broken = [s for s in self._servers.values() if s.key[:2] == (self._home.dev, self._home.ino)
                      and not s.current(None)]
        for server in broken:
            try:
                self._ensure(server.store_directory, server.network, server.listen, exact=True)
            except Exception as exc:  # noqa: BLE001
                self.log(f"dns {server.network}: no name server: {type(exc).__name__}: {exc}")

    def _noted(self) -> list[str]:
        home = [self._home.dev, self._home.ino]
        return [e["store"] for e in names.registered(self.env) if e.get("netns") == home and e.get("store")]

    def _version(self, directory: str) -> int | None:
        """The store's data_version; None when it is gone (its connection closed)."""
        with self._lock:
            reader = self._readers.get(directory)
            if reader is not None and not os.path.exists(reader.path):
                reader.close()
                del self._readers[directory]
                self._seen.pop(directory, None)
                return None
            if reader is None and not os.path.exists(os.path.join(directory, DB_NAME)):
                return None
            return self._reader(directory).version()

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=10)
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
            for reader in self._readers.values():
                reader.close()
            self._readers.clear()
        for server in servers:
            server.stop()


def _records(directory: str, network: str):
    """The network's records now, read with a connection of its own (a store the sweep does
    not watch, e.g. one of a caller in another namespace, is not kept open)."""
    reader = Reader(directory)
    try:
        with reader.transaction() as tx:
            return read(tx, network)
    finally:
        reader.close()
