"""The resident helper's firewall watch: our nftables tables put back within a second of a
`nft flush ruleset`, a firewall reload, a deleted table or a flushed or deleted chain,
without waiting for any pod command.

The helper learns, from the commands it serves, which stores are used in which network
namespace (the caller's "host": node.observe(), one stat and one set lookup per command).
For each such namespace it holds a monitor of the kernel's nftables announcements
(linux/nft/monitor.py), all read by one thread. A change to the structure of our tables
there is debounced briefly (a reload is a burst: the flush, then the firewall's own
tables), then, in that namespace, every store served there puts back the layout and its
live endpoints' elements from its records (reconcile.restore_lost: adding only, under the
store's write lock). What cannot be done is logged and tried again later; nothing here
ever stops the helper or a request.

A watched namespace other than the helper's own is let go once nothing but this watch
holds it (its monitor socket would keep a deleted namespace alive); a store, once its
directory is gone.
"""

from __future__ import annotations

import os
import select
import threading
import time

from ..linux import netns, nsusers, rtnl
from ..linux.nft.monitor import Monitor
from ..node import Node
from ..reconcile import restore_lost

DEBOUNCE_S = 0.05  # quiet time after the last change before restoring
MAX_DELAY_S = 0.25  # at the latest this long after the first change, even while changes go on
RETRY_S = 1.0  # after a restore that failed
HOUSEKEEPING_S = 10.0  # namespaces and stores that are gone are let go
MAX_STORES = 64  # per namespace (a helper serving many throwaway state directories: tests)


class _Place:
    """One watched network namespace."""

    def __init__(self, ident, monitor, home: bool):
        self.ident = ident
        self.monitor = monitor
        self.home = home
        self.stores: dict[str, object] = {}  # store directory -> Node
        self.first: float | None = None  # when the pending change was first seen
        self.due: float | None = None  # when to restore


class FirewallWatch:
    def __init__(self, home, log):
        self.home = home  # the helper's own netns identity
        self.log = log
        self._known: set[tuple] = set()  # (dev, ino, store directory) seen: the hot path's question
        self._places: dict[tuple, _Place] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="cnmd-nftwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            for place in self._places.values():
                place.monitor.close()
            self._places.clear()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # ---- learning what to watch (in the command's thread) -----------------------------------
    def note(self, node) -> None:
        """node.observe()'s callback: the store `node` is used in this thread's netns."""
        try:
            ident = netns.own_identity()
            if (ident.dev, ident.ino, node.store.directory) in self._known:
                return
            self._add(ident, node)
        except Exception as exc:  # noqa: BLE001 -- never the command's problem
            self.log(f"firewall watch: cannot watch {getattr(node.store, 'directory', '?')}: {exc}")

    def _add(self, ident, node) -> None:
        key = (ident.dev, ident.ino)
        directory = node.store.directory
        with self._lock:
            if self._stop.is_set():
                return
            place = self._places.get(key)
            if place is None:
                self._known.add((*key, directory))  # also when the monitor fails: tried once
                place = _Place(ident, Monitor(), ident == self.home)  # in this thread's netns
                self._places[key] = place
            env = {k: v for k, v in node.env.items() if k.startswith("CNM_")}
            place.stores[directory] = Node(directory, env)
            while len(place.stores) > MAX_STORES:
                dropped = next(iter(place.stores))
                del place.stores[dropped]
                self._known.discard((*key, dropped))
            self._known.add((*key, directory))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ---- the watch thread -------------------------------------------------------------------
    def _run(self) -> None:
        tidy_at = time.monotonic() + HOUSEKEEPING_S
        while not self._stop.is_set():
            try:
                with self._lock:
                    places = list(self._places.values())
                now = time.monotonic()
                dues = [p.due for p in places if p.due is not None]
                timeout = max(0.0, min([tidy_at, *dues]) - now)
                readable, _, _ = select.select([self._wake_r, *(p.monitor for p in places)], [], [], timeout)
                if self._wake_r in readable:
                    os.read(self._wake_r, 4096)
                now = time.monotonic()
                for place in places:
                    if place.monitor in readable and place.monitor.touched():
                        place.first = place.first or now
                        place.due = min(now + DEBOUNCE_S, place.first + MAX_DELAY_S)
                for place in places:
                    if place.due is not None and place.due <= now and not self._stop.is_set():
                        self._restore(place)
                if now >= tidy_at:
                    self._tidy()
                    tidy_at = time.monotonic() + HOUSEKEEPING_S
            except Exception as exc:  # noqa: BLE001 -- the watch goes on
                self.log(f"firewall watch: {type(exc).__name__}: {exc}")
                self._stop.wait(RETRY_S)

    def _restore(self, place: _Place) -> None:
        """Every store served in `place` puts back what its live endpoints lost there."""
        since, failed = place.first, False
        place.first = place.due = None
        with self._lock:
            stores = list(place.stores.items())
        fd = rtnl.socket_netns(place.monitor.fileno())
        try:
            with netns.entered(fd):
                for directory, node in stores:
                    try:
                        lost = restore_lost(node)
                    except Exception as exc:  # noqa: BLE001 -- logged, tried again
                        failed = True
                        self.log(f"firewall watch: restoring {directory} in netns {place.ident} failed: {exc}")
                        continue
                    if lost is None:
                        self._forget(place, directory)
                    elif lost:
                        took = (time.monotonic() - since) * 1000 if since else 0.0
                        what = "; ".join(f"{loss.kind} {loss.name}" for loss in lost[:5])
                        self.log(f"firewall watch: restored {len(lost)} loss(es) of {directory} in netns "
                                 f"{place.ident} {took:.0f} ms after the change: {what}")
        finally:
            os.close(fd)
        if failed:
            place.due = time.monotonic() + RETRY_S

    def _forget(self, place: _Place, directory: str) -> None:
        with self._lock:
            place.stores.pop(directory, None)
            self._known.discard((place.ident.dev, place.ident.ino, directory))

    def _tidy(self) -> None:
        """Let go of stores whose directory is gone, and of namespaces (not the helper's
        own) that nothing else holds any more."""
        with self._lock:
            places = list(self._places.values())
        for place in places:
            for directory, node in list(place.stores.items()):
                if not os.path.exists(node.store.path):
                    self._forget(place, directory)
        foreign = [p for p in places if not p.home]
        if not foreign:
            return

        users = nsusers.Users()
        for place in foreign:
            if place.stores and users.of(place.ident.dev, place.ident.ino):
                continue
            with self._lock:
                self._places.pop((place.ident.dev, place.ident.ino), None)
                self._known.difference_update({k for k in self._known if k[:2] == (place.ident.dev, place.ident.ino)})
            place.monitor.close()
