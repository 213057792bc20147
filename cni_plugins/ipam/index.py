"""The helper's lease index: each lease directory's Leases, kept exact by inotify.

A one-shot cnm-ipam reads every lease file of the directory under the flock
(leases.scan): ~3 syscalls and a parse per lease, 6 ms of an ADD with 1,000 pods.
The helper (cnmd, after disk.keep_index()) keeps the Leases of each directory
it served and an inotify watch on it, and under the flock only drains the
watch and re-reads the files it names.

Why that is exact: every writer of the directory (Go host-local, cnm-ipam in
any process) changes it only while holding <dir>/lock, and inotify queues an
event from inside the syscall that made the change (create, write, close,
unlink, rename). So once we hold the flock, every change made before it was
released is in our queue; re-reading each named file then gives the same
Leases as a full scan. When the queue may be incomplete or the watch no longer
sees this directory (queue overflow, the directory deleted, moved or
unmounted, a read error) the index is rebuilt by a scan, the watch first.
Filesystems that can change behind this kernel's back (network, FUSE) get no
index. Changes that bypass the flock race with a scan just the same.

At most MAX_DIRS directories are indexed (one inotify instance each, of the
default 128 per user); the least recently used one is closed beyond that.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from ..linux import inotify
from .leases import LeaseFiles, Leases, scan

MAX_DIRS = 16


class DirIndex:
    """One directory's Leases and watch. Used by one thread at a time: its holder holds the
    directory's flock and `lock`."""

    def __init__(self, key: tuple[int, int]):
        self.key = key
        self.lock = threading.Lock()
        self.closed = False
        self.watch: inotify.DirWatch | None = None
        self.leases: Leases | None = None
        self.rescans = 0  # full scans (the first one included)
        self.rereads = 0  # files re-read for an event

    def sync(self, store: LeaseFiles) -> None:
        """Make `leases` the directory's state (the caller holds the flock and `lock`)."""
        if self.leases is not None and self.watch is not None:
            names: set[str] | None = set()
            try:
                events = self.watch.read()
            except OSError:
                events, names = [], None
            for wd, mask, name in events:
                if mask & inotify.LOST or wd != self.watch.wd:
                    names = None  # the queue is incomplete or the watch lost the directory
                    break
                if name:
                    names.add(name)
            if names is not None:
                for name in names:
                    self.leases.update_from(store, name)
                self.rereads += len(names)
                return
        self.drop()
        self.watch = inotify.DirWatch(store.fd)  # first: any change after it is queued
        self.leases = scan(store)
        self.rescans += 1

    def drop(self) -> None:
        """Forget everything; the next sync rescans."""
        self.leases = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def release(self) -> None:
        self.lock.release()
        self._close_if_closed()

    def close(self) -> None:
        """Evicted: closed now if unused, else by its holder's release()."""
        self.closed = True
        self._close_if_closed()

    def _close_if_closed(self) -> None:
        if self.closed and self.lock.acquire(blocking=False):
            try:
                self.drop()
            finally:
                self.lock.release()


_lock = threading.Lock()
_indexes: "OrderedDict[tuple[int, int], DirIndex]" = OrderedDict()


def acquire(store: LeaseFiles) -> DirIndex | None:
    """The directory's index, synced, held for the caller until its release(); None when the
    directory gets no index (its filesystem, no inotify instance left): scan instead.
    The caller holds the directory's flock."""
    st = os.fstat(store.fd)
    key = (st.st_dev, st.st_ino)
    evicted: list[DirIndex] = []
    with _lock:
        idx = _indexes.get(key)
        if idx is None:
            if not _local(store.fd):
                return None
            idx = _indexes[key] = DirIndex(key)
            while len(_indexes) > MAX_DIRS:
                evicted.append(_indexes.popitem(last=False)[1])
        else:
            _indexes.move_to_end(key)
    for old in evicted:
        old.close()
    idx.lock.acquire()
    if idx.closed:  # evicted between the lookup and now
        idx.release()
        return None
    try:
        idx.sync(store)
    except OSError:  # EMFILE, ENOSPC (inotify limits), a read error: scan this time
        idx.drop()
        idx.release()
        return None
    except BaseException:
        idx.drop()
        idx.release()
        raise
    return idx


def _local(fd: int) -> bool:
    try:
        return inotify.filesystem_type(fd) in inotify.LOCAL_FILESYSTEMS
    except OSError:
        return False


def lookup(path: str) -> DirIndex | None:
    """The index of the directory at `path`, if any (for tests and diagnostics)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    with _lock:
        return _indexes.get((st.st_dev, st.st_ino))


def clear() -> None:
    """Close every index."""
    with _lock:
        indexes = list(_indexes.values())
        _indexes.clear()
    for idx in indexes:
        idx.close()
