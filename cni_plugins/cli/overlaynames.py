"""The resident helper's names of one overlay network across nodes (drivers/overlay/namerecords.py
for the keys): publish this node's, learn the other nodes'.

Publishing: a thread looks at the node's store (SQLite's data_version, every PUBLISH_S) and
makes this node's keys in etcd say what the store says: one key per endpoint with names,
under the node's subnet, bound to the node's subnet lease (so a vanished node's names go with
its lease). What etcd holds under the node's subnet is known from the mesh's list and watch
(the same list and watch as the subnet leases: cli/overlaymesh.py feeds reset() and apply());
a key there that this node did not write, or wrote on another lease, is rewritten or deleted.
etcd unreachable: nothing is lost, the next round tries again.

Learning: the other nodes' records, as the list and watch show them, go to the name servers
of this process (drivers/dns/remote.py) — only records under a subnet some other node holds
a lease on, bound to that lease; a name a local pod holds is never taken from another node
(logged once). The same name on several other nodes answers with all their addresses.
What the servers answer is rebuilt by a thread of its own after changes, at most every
REFRESH_S (a burst of watch events costs one rebuild).
"""

from __future__ import annotations

import ipaddress
import threading

PUBLISH_S = 0.25  # how often the store is looked at for names to publish (a data_version read)
# At most this often the other nodes' names are rebuilt (a rebuild is O(all records): ~80 ms at
# 20000 pods; one per watch event let any churn, or one writer's put loop, burn a core per node).
REFRESH_S = 0.2


class NameExchange:
    def __init__(self, agent):
        self.agent = agent  # the network's NetworkAgent: state dir, network, log, lease records
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time: an older snapshot never lands last
        self._theirs: dict[bytes, object] = {}  # key -> NameRecord of another subnet
        self._mine: dict[bytes, tuple[bytes, int]] = {}  # key under this node's subnet -> (value, lease) in etcd
        self._local: dict[str, tuple] = {}  # endpoint id -> (names, addresses) in the store
        self._local_version = None
        self._shadowed: set[tuple[bytes, str]] = set()  # (key, name) already logged
        self._logged: set[tuple[bytes, str]] = set()  # (key, why) of ignored records already logged
        self._log_lock = threading.Lock()
        self._wake = threading.Event()
        self._stale = threading.Event()  # the other nodes' names (or the local ones) changed: rebuild
        self._refresh_warned = False
        self._dirty = True  # etcd's keys under this node's subnet may not say what the store says
        self._reader = None
        self._client = None
        self._warned = False
        self._thread = threading.Thread(target=self._publish_loop, name=f"cnmd-names-{agent.network[:20]}",
                                        daemon=True)
        self._refresher = threading.Thread(target=self._refresh_loop, name=f"cnmd-dns-{agent.network[:20]}",
                                           daemon=True)

    @property
    def log(self):
        return self.agent.log

    def start(self) -> None:
        self._thread.start()
        self._refresher.start()

    def stop(self) -> None:
        self._wake.set()
        self._stale.set()
        for thread in (self._thread, self._refresher):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10)
        self.forget()
        if self._reader is not None and not self._thread.is_alive():
            self._reader.close()

    def forget(self) -> None:
        """The network is gone from this node: its servers answer no other node's names."""
        from ..drivers.dns import remote

        with self._refreshing:  # (a rebuild under way must not publish after it)
            remote.clear(self.agent.state_dir, self.agent.network)
        self._stale.set()  # (the rebuilder, stopped with the agent, returns)

    # ---- what etcd holds (the mesh's list and watch) ----------------------------------------
    def reset(self, layout, kvs, own: dict) -> None:
        """A fresh list of the names directory (the converge's)."""
        from ..drivers.overlay import namerecords

        theirs, mine = {}, {}
        own_dir = _own_directory(layout, own)
        for kv in kvs:
            if own_dir is not None and kv.key.startswith(own_dir):
                mine[kv.key] = (kv.value, kv.lease)
                continue
            record, why = namerecords.parse(layout, kv)
            if record is None:
                self._ignored(kv.key, why)
            else:
                theirs[kv.key] = record
        with self._lock:
            self._theirs, self._mine = theirs, mine
        self._dirty = True
        self._wake.set()
        self._stale.set()

    def apply(self, layout, events, own: dict) -> None:
        """Watch events on the names directory."""
        from ..drivers.overlay import namerecords

        own_dir = _own_directory(layout, own)
        with self._lock:
            for event in events:
                key = event.kv.key
                if own_dir is not None and key.startswith(own_dir):
                    if event.kind == "DELETE":
                        self._mine.pop(key, None)
                    else:
                        self._mine[key] = (event.kv.value, event.kv.lease)
                    self._dirty = True
                    self._wake.set()
                    continue
                self._theirs.pop(key, None)
                if event.kind != "DELETE":
                    record, why = namerecords.parse(layout, event.kv)
                    if record is None:
                        self._ignored(key, why)
                    else:
                        self._theirs[key] = record
        self._stale.set()

    def _ignored(self, key: bytes, why: str) -> None:
        """Logged once per key and reason: every converge (each leaseTTL on a quiet network)
        reads the records again, and a hostile writer may put the same bad record in a loop."""
        from ..drivers.overlay.lease import printable_key

        with self._log_lock:
            if (key, why) in self._logged:
                return
            if len(self._logged) > 4096:  # (only for logging once: bounded)
                self._logged.clear()
            self._logged.add((key, why))
        self.log(f"overlay {self.agent.network}: ignored name record {printable_key(key)}: {why}")

    # ---- what the name servers answer ------------------------------------------------------
    def refresh(self) -> None:
        """The other nodes' names, for this process's name servers: only records bound to the
        lease of the node holding their subnet, never a name a local pod holds."""
        # (the rebuilder and a direct call may overlap: without this, a snapshot taken before
        # a change could be published after the one taken after it, and a deleted pod's name
        # would answer until the next change)
        with self._refreshing:
            if not self.agent.stop_event.is_set():  # (stopped: forget() cleared the board for good)
                self._refresh()

    def _refresh_loop(self) -> None:
        """Rebuilds after changes, at most one per REFRESH_S: the changes of a burst in one."""
        while True:
            self._stale.wait()
            if self.agent.stop_event.is_set():
                return
            self._stale.clear()
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 -- logged once, tried again at the next change
                if not self._refresh_warned:
                    self.log(f"overlay {self.agent.network}: other nodes' names not rebuilt: "
                             f"{type(exc).__name__}: {exc}")
                    self._refresh_warned = True
                self._stale.set()
            else:
                self._refresh_warned = False
            self.agent.stop_event.wait(REFRESH_S)

    def _refresh(self) -> None:
        from ..drivers.dns import remote
        from ..drivers.overlay.lease import printable_key

        holders = self.agent.lease_holders()  # subnet -> (node, lease) of the other nodes
        with self._lock:
            records = sorted(self._theirs.items())
            local = {name for names, _ in self._local.values() for name in names}
        names: dict[str, list[str]] = {}
        reverse: dict[str, str] = {}
        for key, record in records:
            holder = holders.get(str(record.subnet))
            if holder is None or holder[1] != record.lease:
                continue  # not (or no longer) the record of the node holding that subnet
            kept = []
            for name in record.names:
                if name in local:
                    if len(self._shadowed) > 4096:  # (only for logging once: bounded)
                        self._shadowed.clear()
                    if (key, name) not in self._shadowed:
                        self._shadowed.add((key, name))
                        self.log(f"overlay {self.agent.network}: ignored name {name!r} of node {holder[0]!r} "
                                 f"({printable_key(key)}): a pod on this node holds it")
                    continue
                kept.append(name)
                known = names.setdefault(name, [])
                known += [a for a in record.addresses if a not in known]
            for address in record.addresses if kept else ():  # (a PTR never gives a local pod's name)
                reverse.setdefault(address, kept[0])
        remote.publish(self.agent.state_dir, self.agent.network,
                       remote.RemoteNames({k: tuple(v) for k, v in names.items()}, reverse))

    # ---- publishing ------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while not self.agent.stop_event.is_set():
            self._wake.wait(PUBLISH_S)
            self._wake.clear()
            if self.agent.stop_event.is_set():
                return
            try:
                if self._read_local():
                    self._stale.set()
                    self._dirty = True
                if self._dirty:
                    self._dirty = False
                    self._publish()
            except Exception as exc:  # noqa: BLE001 -- logged once, tried again next round
                self._dirty = True
                if not self._warned:
                    self.log(f"overlay {self.agent.network}: names not published: {type(exc).__name__}: {exc}")
                    self._warned = True
                self.agent.stop_event.wait(1.0)
            else:
                if self._warned:
                    self.log(f"overlay {self.agent.network}: names published again")
                self._warned = False

    def _read_local(self) -> bool:
        """The store's names of the network, re-read after a change; whether they changed."""
        import os

        from ..cnm.store import DB_NAME, Reader
        from ..drivers.dns.zone import endpoint_names

        if self._reader is not None and not os.path.exists(self._reader.path):
            self._reader.close()
            self._reader, self._local_version = None, None
        if self._reader is None:
            if not os.path.exists(os.path.join(self.agent.state_dir, DB_NAME)):
                return self._set_local({})
            self._reader = Reader(self.agent.state_dir)
        version = self._reader.version()
        if version == self._local_version:
            return False
        with self._reader.transaction() as tx:
            found = endpoint_names(tx, self.agent.network)
        self._local_version = version
        return self._set_local(found)

    def _set_local(self, found: dict) -> bool:
        with self._lock:
            if found == self._local:
                return False
            self._local = found
        return True

    def _publish(self) -> None:
        """etcd's keys under this node's subnet made to say what the store says."""
        from ..drivers.overlay import mesh, namerecords, state

        data = state.read(self.agent.state_dir, self.agent.network) or {}
        settings, lease, subnet = data.get("settings"), int(data.get("lease") or 0), data.get("subnet")
        if not settings or not lease or not subnet:
            return
        layout = mesh.layout_of(settings)
        net = ipaddress.ip_network(subnet)
        with self._lock:
            wanted = {namerecords.key(layout, net, ep): namerecords.value(data.get("node", ""), names, addresses)
                      for ep, (names, addresses) in self._local.items()
                      if all(ipaddress.ip_address(a) in net for a in addresses)}
            own_dir = namerecords.subnet_directory(layout, net)
            mine = {k: v for k, v in self._mine.items() if k.startswith(own_dir)}
        puts = [(k, v) for k, v in sorted(wanted.items()) if mine.get(k) != (v, lease)]
        deletes = sorted(k for k in mine if k not in wanted)
        if not puts and not deletes:
            return
        if self._client is None or self._client[0] != repr(settings.get("store")):
            self._client = (repr(settings.get("store")), mesh.client_of(settings, timeout=2))
        client = self._client[1]
        for k, v in puts:
            client.put(k, v, lease)
            with self._lock:
                self._mine[k] = (v, lease)
        for k in deletes:
            client.delete(k)
            with self._lock:
                self._mine.pop(k, None)
        if puts or deletes:
            self.log(f"overlay {self.agent.network}: names published ({len(puts)} written, {len(deletes)} removed)")


def _own_directory(layout, own: dict) -> bytes | None:
    from ..drivers.overlay import namerecords

    subnet = own.get("subnet")
    return namerecords.subnet_directory(layout, ipaddress.ip_network(subnet)) if subnet else None
