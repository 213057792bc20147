"""The resident helper's overlay mesh: for every cnm-overlay network this node is on, keep the
node's subnet lease alive and the VXLAN mesh in line with etcd, without waiting for any pod
command.

Which networks: the state files (drivers/overlay/state.py) of the default store, and every one
a command writes in the helper's own network namespace (the ADD that claims a lease writes
it; one that ran in-process is found by the next scan). Per network two threads:
  - the keeper refreshes the etcd lease every leaseTTL/3 and stamps the state file (an ADD
    then trusts the file and asks etcd nothing); a lease found gone, or the VXLAN device
    deleted, wakes the watcher;
  - the watcher converges (lease claimed or kept, device, mesh from a fresh list), then
    follows a watch of the network's prefix from the list's revision, applying each change
    to the kernel. A broken or compacted watch, one silent for a lease TTL, or etcd
    unreachable, means: wait (at most a second), converge again from a fresh list.
The watch covers the network's whole directory: the subnet leases, and the pod names the
nodes publish (cli/overlaynames.py, which also publishes this node's from a third thread); a
converge lists the two apart, at one revision (names too many for a list cost the names, never
the mesh). Hostile records are skipped with a log line. Nothing here ever stops the helper.
"""

from __future__ import annotations

import ipaddress
import threading
import time

MARK_LOCK_WAIT_S = 0.5  # for the state file's lock when stamping a keep-alive's outcome
RETRY_S = (0.1, 0.2, 0.5, 1.0)  # waits between failed converges (the last repeats)
TOO_LARGE_RETRY_S = 30.0  # a listing over the client's caps: every node re-reading it each second would flood etcd
SCAN_S = 2.0  # how often the known stores are looked at for networks an in-process ADD joined


class NetworkAgent:
    def __init__(self, state_dir: str, network: str, log):
        self.state_dir = state_dir
        self.network = network
        self.log = log
        self.stop_event = threading.Event()
        self.lock = threading.Lock()  # kernel programming: one at a time
        self._watch = None
        self._reconverge = threading.Event()
        self._records: dict[bytes, object] = {}
        self._clients: dict = {}  # _client()
        self._unrefreshed_logged = False  # (one log line per outage, not one per keep-alive)
        self._device_missing_logged = False
        self._last: dict | None = None  # the state file as last read (_settings)
        self.converged = threading.Event()  # (set after each successful converge: for tests and doctor)
        from .overlaynames import NameExchange

        self.names = NameExchange(self)
        self._watcher = threading.Thread(target=self._watch_loop, name=f"cnmd-overlay-{network[:20]}", daemon=True)
        self._keeper = threading.Thread(target=self._keep_loop, name=f"cnmd-lease-{network[:20]}", daemon=True)

    def start(self) -> None:
        self._watcher.start()
        self._keeper.start()
        self.names.start()

    def stop(self) -> None:
        self.stop_event.set()
        self._close_watch()
        for t in (self._watcher, self._keeper):
            if t.is_alive():
                t.join(timeout=10)
        self.names.stop()

    def lease_holders(self) -> dict[str, tuple[str, int]]:
        """subnet -> (node, etcd lease) of every other node, as the list and watch show them."""
        from ..drivers.overlay import state

        own = state.read(self.state_dir, self.network) or {}
        return {str(r.subnet): (r.node, r.lease) for r in list(self._records.values())
                if r.node != own.get("node") and str(r.subnet) != own.get("subnet")}

    def alive(self) -> bool:
        return self._watcher.is_alive()

    def _converge_again(self) -> None:
        """Have the watcher converge from a fresh list now (its watch is closed under it)."""
        self._reconverge.set()
        self._close_watch()

    def _close_watch(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.close()

    def _client(self, settings: dict, timeout: float | None = None):
        """The keeper's client, kept for the agent's life: it remembers the member that last
        answered, so a hung member costs one timeout, not one per keep-alive (waiting on it
        every round outlived a short leaseTTL)."""
        from ..drivers.overlay import etcd, mesh

        key = (repr(settings.get("store")), timeout)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = mesh.client_of(settings, timeout=timeout or etcd.DEFAULT_TIMEOUT)
        return client

    def _settings(self) -> dict | None:
        """The network's settings from its state file; None when the node left the network.
        A file removed by hand while the node's store records endpoints on the network is written
        again: its lease must be kept (the pods use the subnet); without them the node has left
        (a stray address lease, e.g. of a dead ADD, does not hold the network on the node)."""
        from ..drivers.overlay import mesh, state

        data = state.read(self.state_dir, self.network)
        last = self._last
        if data is None and last is not None and last.get("subnet") and mesh.endpoints_on(
                self.state_dir, self.network):
            try:
                if state.restore(self.state_dir, self.network, last):
                    self.log(f"overlay {self.network}: state file removed while pods use {last['subnet']}; "
                             f"written again")
            except OSError as exc:
                self.log(f"overlay {self.network}: state file removed and cannot be written again: {exc}")
            data = last
        if data is not None:
            self._last = data
        return (data or {}).get("settings")

    # ---- watcher ------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        from ..drivers.overlay import etcd

        failures = 0
        while not self.stop_event.is_set():
            too_large = False
            settings = self._settings()
            if settings is None:  # the network is gone from this node
                self.stop_event.set()  # (the names publisher ends with it)
                self.names.forget()
                return
            try:
                revision = self._converge(settings)
                failures = 0
                self._follow(settings, revision)
            except etcd.Idle:
                continue  # quiet for a lease TTL: list again (through a member that answers)
            except etcd.Compacted:
                self.log(f"overlay {self.network}: watch compacted; listing again")
                continue
            except etcd.TooLarge as exc:
                if failures == 0:
                    self.log(f"overlay {self.network}: {exc}; retrying in {TOO_LARGE_RETRY_S:.0f} s")
                failures += 1
                too_large = True
            except etcd.EtcdError as exc:
                if not self.stop_event.is_set():
                    if failures == 0 and not self._reconverge.is_set():  # (not the keeper's own close)
                        self.log(f"overlay {self.network}: {exc}; retrying")
                    failures += 1
            except Exception as exc:  # noqa: BLE001 -- a bug or a kernel refusal: logged, retried
                if failures == 0:
                    self.log(f"overlay {self.network}: {type(exc).__name__}: {exc}; retrying")
                failures += 1
            if failures:
                self.stop_event.wait(TOO_LARGE_RETRY_S if too_large else RETRY_S[min(failures, len(RETRY_S)) - 1])

    def _converge(self, settings: dict) -> int:
        from ..drivers.overlay import etcd, mesh, namerecords

        client = mesh.client_of(settings)
        layout = mesh.layout_of(settings)
        # The leases and the names in two lists of one revision: the names (one key per pod of
        # the whole cluster) too many or too big for a list must not stop the mesh.
        kvs, revision = client.list_prefix(layout.directory)
        directory = namerecords.names_directory(layout)
        try:
            named, _ = client.range(directory, etcd.prefix_end(directory), revision=revision,
                                    limit=etcd.MAX_LIST_KEYS)
        except etcd.TooLarge as exc:
            named = None
            self.log(f"overlay {self.network}: other nodes' names not listed (kept as they were): {exc}")
        with self.lock:
            self._reconverge.clear()
            outcome = mesh.converge(settings, self.state_dir, client, kvs)
            self._records = {layout.key(r.subnet): r for r in outcome.records}
        for why in outcome.skipped:
            self.log(f"overlay {self.network}: ignored record {why}")
        for why in outcome.conflicts:
            self.log(f"overlay {self.network}: duplicate VTEP MAC: {why}")
        if named is not None:
            self.names.reset(layout, named, outcome.data)
        if outcome.changed or outcome.removed:
            self.log(f"overlay {self.network}: mesh converged ({outcome.changed} nodes added or changed, "
                     f"{outcome.removed} removed)")
        self.converged.set()
        return revision

    def _follow(self, settings: dict, revision: int) -> None:
        from ..drivers.overlay import etcd, mesh, namerecords

        client = mesh.client_of(settings)
        layout = mesh.layout_of(settings)
        directory = namerecords.network_directory(layout)
        watch = client.watch(directory, etcd.prefix_end(directory), start_revision=revision + 1)
        # (a member stopped or cut off from the quorum keeps the stream open and silent: a
        # node joining or vanishing would never be seen; etcd's progress notifications come
        # only every 10 minutes)
        watch.set_timeout(max(float(settings.get("leaseTTL", 60)), 2.0))
        self._watch = watch
        try:
            if self.stop_event.is_set() or self._reconverge.is_set():
                return
            for events in watch:
                if self.stop_event.is_set() or self._reconverge.is_set():
                    return
                if events:
                    self._apply(settings, layout, events)
            if not self.stop_event.is_set():
                raise etcd.Unavailable("watch stream ended")
        finally:
            self._watch = None
            watch.close()

    def _apply(self, settings: dict, layout, events) -> None:
        """Each change on its own: one node's three entries added, replaced or removed (the
        cost of an event does not grow with the number of nodes)."""
        from ..drivers.overlay import lease, mesh, namerecords, state
        from ..linux import links, vxlan

        own = (state.read(self.state_dir, self.network) or {})
        own_key = layout.key(ipaddress.ip_network(own["subnet"])) if own.get("subnet") else None
        named = [e for e in events if namerecords.is_name_key(layout, e.kv.key)]
        events = [e for e in events if e.kv.key.startswith(layout.directory)]

        def peer(record):
            if record is None or record.node == own.get("node") or str(record.subnet) == own.get("subnet") \
                    or record.vtep_ip == own.get("vtepIP"):
                return None
            return vxlan.Peer(str(record.subnet), record.vtep_ip, record.vtep_mac)

        changes = []  # (old peer, new peer)
        for event in events:
            old = self._records.pop(event.kv.key, None)
            new = None
            if event.kind == "DELETE":
                if event.kv.key == own_key:  # our own lease went (expired, deleted): claim again
                    self._reconverge.set()
            else:
                new, why = layout.parse(event.kv)
                if new is None:
                    self.log(f"overlay {self.network}: ignored record {lease.printable_key(event.kv.key)}: {why}")
                else:
                    self._records[event.kv.key] = new
                    if event.kv.key == own_key and new.node != own.get("node"):
                        self.log(f"overlay {self.network}: subnet {new.subnet} is now held by node {new.node!r}")
                        self._reconverge.set()
            if self._shares_mac(event.kv.key, [r for r in (old, new) if peer(r)], own.get("vtepMAC")):
                self._reconverge.set()  # which record keeps the MAC: converge decides (peers.select)
            if peer(old) != peer(new):
                changes.append((peer(old), peer(new)))
        if self._reconverge.is_set():
            self._close_watch()
            return
        if named or events:
            self.names.apply(layout, named, own)  # (after the lease records: a node's names need its lease)
        if not changes:
            return
        _, vx_name = mesh.device_names(self.network)
        with self.lock, links.rtnl() as ipr:
            index = links.link_index(ipr, vx_name)
            if index is None:  # the device was deleted: converge recreates it
                self._reconverge.set()
                self._close_watch()
                return
            for old, new in changes:
                if old is not None:
                    vxlan.remove_peer(ipr, index, old)
                if new is not None:
                    vxlan.add_peer(ipr, index, new)
        added = sum(new is not None for _, new in changes)
        self.log(f"overlay {self.network}: mesh updated ({added} added or changed, {len(changes) - added} removed)")

    def _shares_mac(self, key: bytes, records, own_mac) -> bool:
        """One of `records` (another node's, at `key` before and after an event) has a VTEP MAC
        another record (or this node) has: programming it alone could overwrite an FDB entry."""
        macs = {r.vtep_mac for r in records}
        return bool(macs) and (own_mac in macs or any(
            r.vtep_mac in macs for k, r in self._records.items() if k != key))

    # ---- keeper -------------------------------------------------------------------------
    def _keep_loop(self) -> None:
        failing = False
        while True:
            settings = self._settings()
            if settings is None:
                return
            interval = max(settings.get("leaseTTL", 60) / 3, 0.5)
            if self.stop_event.wait(interval):
                return
            try:
                self._keep_once(settings, interval)
                failing = False
            except Exception as exc:  # noqa: BLE001 -- e.g. the state file not writable: a round
                # lost, never the keeper (without it the lease would lapse every TTL)
                if not failing:
                    self.log(f"overlay {self.network}: keep-alive round failed: {type(exc).__name__}: {exc}")
                failing = True

    def _keep_once(self, settings: dict, interval: float) -> None:
        from ..drivers.overlay import etcd, state

        data = state.read(self.state_dir, self.network) or {}
        if not data.get("lease"):
            return
        record = self._own_record(settings, data)
        if record is not None and record.lease and record.lease != int(data["lease"]):
            # (two ADDs raced a re-bind and the file kept the lease the record left: keeping
            # that one alive would let the record's own lapse and free the subnet)
            self.log(f"overlay {self.network}: this node's record stands on another lease than the state "
                     f"file's; claiming again")
            self._converge_again()
            return
        tried = time.time()  # (the lease lives at least TTL from here, however long the call)
        try:
            # A hung member costs one timeout before the next is asked: wait + timeout must
            # stay well inside the TTL (with a short TTL, 1/3 + 2 s did not).
            ttl = self._client(settings, timeout=min(2.0, interval)).keepalive(int(data["lease"]))
        except etcd.EtcdError as exc:
            if not self._unrefreshed_logged:
                self.log(f"overlay {self.network}: lease not refreshed: {exc}")
                self._unrefreshed_logged = True
            self._mark(data["lease"], unreachable=tried)  # ADDs do not wait on it too
            return
        self._unrefreshed_logged = False
        if ttl < settings.get("leaseTTL", 60):  # gone, or granted for a shorter leaseTTL
            self.log(f"overlay {self.network}: lease {data['lease']} is gone or too short; claiming again")
            self._converge_again()
            return
        self._mark(data["lease"], confirmed=tried)
        if not self._device_present():  # deleted by hand: converge recreates it (same MAC)
            if not self._device_missing_logged:  # (once per absence: the converge logs its failures)
                self.log(f"overlay {self.network}: VXLAN device missing; recreating it")
                self._device_missing_logged = True
            self._converge_again()
        else:
            self._device_missing_logged = False

    def _own_record(self, settings: dict, data: dict):
        """This node's record as the watch last saw it (None if unknown)."""
        from ..drivers.overlay import mesh

        try:
            key = mesh.layout_of(settings).key(ipaddress.ip_network(data.get("subnet", "")))
        except ValueError:
            return None
        record = self._records.get(key)
        return record if record is not None and record.node == data.get("node") else None

    def _mark(self, lease_id, **fields) -> None:
        """Record a keep-alive's outcome in the network's file, if it still holds that lease."""
        from ..drivers.overlay import state

        # (never under the agent's lock, which a converge holds while it waits on etcd and on
        # this file: a stuck holder costs a stamp, never the next keep-alive's time)
        state.amend(self.state_dir, self.network, lease_id, wait=MARK_LOCK_WAIT_S, **fields)

    def _device_present(self) -> bool:
        from ..drivers.overlay import mesh
        from ..linux import links

        _, vx_name = mesh.device_names(self.network)
        try:
            with links.rtnl() as ipr:
                return links.link_index(ipr, vx_name) is not None
        except OSError:
            return True  # (not known: nothing to do)


class OverlayMesh:
    """Every overlay network of this node the helper knows of: a network's agent starts the
    moment a command in the helper's own netns writes its state file (the ADD that claims the
    lease), or when a scan of the stores finds the file (every SCAN_S: an ADD that ran
    in-process, without the helper), and ends when the file is gone."""

    def __init__(self, home, log, directories=()):
        self.home = home
        self.log = log
        self._dirs: set[str] = set(directories)
        self._agents: dict[tuple[str, str], NetworkAgent] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._wake = threading.Event()
        self._scanner = threading.Thread(target=self._scan_loop, name="cnmd-overlay-scan", daemon=True)

    def start(self) -> None:
        self._scanner.start()

    def _scan_loop(self) -> None:
        while not self._wake.wait(SCAN_S):
            with self._lock:
                dirs = sorted(self._dirs)
            for directory in dirs:
                try:
                    self.scan(directory)
                except Exception as exc:  # noqa: BLE001 -- logged, tried again
                    self.log(f"overlay: scan of {directory} failed: {type(exc).__name__}: {exc}")

    def scan(self, directory: str) -> None:
        from ..drivers.overlay import state

        for data in state.all_networks(directory):
            if isinstance(data.get("settings"), dict):
                self.serve(directory, data["network"])

    def written(self, directory: str, network: str) -> None:
        """drivers/overlay/state.observe()'s callback, in the writing thread."""
        key = (directory, network)
        agent = self._agents.get(key)
        if agent is not None and agent.alive():
            return
        try:
            from ..linux import netns

            if netns.own_identity() != self.home:
                return  # the mesh is programmed in the helper's own netns only
        except OSError:
            return
        with self._lock:
            self._dirs.add(directory)
        self.serve(directory, network)

    def serve(self, directory: str, network: str) -> None:
        key = (directory, network)
        with self._lock:
            if self._stopped:
                return
            agent = self._agents.get(key)
            if agent is not None and agent.alive():
                return
            agent = NetworkAgent(directory, network, self.log)
            self._agents[key] = agent
            agent.start()
        self.log(f"overlay {network}: keeping this node's lease and mesh (store {directory})")

    def stop(self) -> None:
        from ..drivers.overlay import state

        state.observe(None)
        self._wake.set()
        if self._scanner.is_alive():
            self._scanner.join(timeout=10)
        with self._lock:
            self._stopped = True
            agents = list(self._agents.values())
            self._agents.clear()
        for agent in agents:
            agent.stop()


def start(home, log, default_dir: str) -> OverlayMesh | None:
    from ..drivers.overlay import state

    try:
        mesh = OverlayMesh(home, log, [default_dir])
        state.observe(mesh.written)
        mesh.scan(default_dir)
        mesh.start()
        return mesh
    except Exception as exc:  # noqa: BLE001 -- the helper serves without it
        log(f"no overlay mesh: {type(exc).__name__}: {exc}")
        return None
