"""The name servers of a resident helper: one per (network namespace, store, network).

An ADD that the helper serves (names.on_commit, in the command's thread and netns) makes sure
its network's server listens before the ADD answers. At start, the helper serves the stores
noted under <run dir>/dns/ in its own namespace (names.register), so names answer again after
a restart without any command. A server whose network has no endpoint left stops by itself.
"""

from __future__ import annotations

import threading

from ...cnm.store import Reader
from ...linux import netns
from . import names
from .server import NetworkServer
from .zone import read


class NameService:
    def __init__(self, log, env):
        self.log = log
        self.env = env
        self._servers: dict[tuple, NetworkServer] = {}
        self._lock = threading.Lock()

    def ensure(self, node, network: str, listen) -> None:
        """names.on_commit's callback. Never raises: an ADD does not fail for its names."""
        try:
            self._ensure(node.store.directory, network, listen)
        except Exception as exc:  # noqa: BLE001
            self.log(f"dns {network}: no name server on {sorted(listen)}: {type(exc).__name__}: {exc}")

    def _ensure(self, directory: str, network: str, listen) -> None:
        ident = netns.own_identity()
        key = (ident.dev, ident.ino, directory, network)
        with self._lock:
            server = self._servers.get(key)
            if server is not None and server.current(listen):
                return
            if server is not None:
                server.stop()
                del self._servers[key]
            server = NetworkServer(directory, network, listen, self.own_addresses, self.log,
                                   on_idle=self._idle)
            server.key = key
            self._servers[key] = server
            server.start()
        self.log(f"dns {network}: serving on {', '.join(a for a, _ in sorted(listen))} (store {directory})")

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

    def start_registered(self) -> None:
        """The stores noted for this namespace: serve their networks' names now."""
        home = netns.own_identity()
        for entry in names.registered(self.env):
            if entry.get("netns") != [home.dev, home.ino]:
                continue
            directory = entry.get("store", "")
            try:
                reader = Reader(directory)
            except Exception:  # noqa: BLE001 -- a store gone since
                continue
            try:
                with reader.transaction() as tx:
                    found = [(net.name, read(tx, net.name)) for net in tx.list_networks()
                             if net.options.get(names.OPTIONS_KEY)]
            except Exception as exc:  # noqa: BLE001
                self.log(f"dns: cannot read store {directory}: {exc}")
                continue
            finally:
                reader.close()
            for network, records in found:
                if records.empty:
                    continue
                try:
                    self._ensure(directory, network, records.listen)
                except Exception as exc:  # noqa: BLE001
                    self.log(f"dns {network}: no name server: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        with self._lock:
            servers = list(self._servers.values())
            self._servers.clear()
        for server in servers:
            server.stop()
