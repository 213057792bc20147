"""Per-sandbox locks: commands on one sandbox run one at a time, on different sandboxes at once.

The store's write lock covers only the store's own short transactions; the slow work of a
command (IPAM, the kernel) runs under the lock of its sandbox instead. Holding it is also
the proof a sweep needs: an endpoint whose ADD or DEL is unfinished (phase adding/deleting)
while nobody holds its sandbox's lock belongs to a command that died.

One file beside the store (`sandboxes.lock`, cni_plugins/node.py), one byte of it per sandbox key, locked with
open-file-description locks (F_OFD_SETLK): they exclude other threads of the same process
(the resident helper serves many commands at once) as well as other processes, they go
with the descriptor when a process dies, and they are on the store's own filesystem, so
anyone who can open the store (a `cnmctl gc` in another mount namespace too) sees them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from contextlib import contextmanager
from typing import Iterator

DEFAULT_TIMEOUT_S = 120.0  # as the store's busy timeout: the kubelet gives a pod two minutes
_FLOCK = "@hhqqi0q"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), aligned


class LockTimeout(Exception):
    pass


def sandbox_key(sandbox_id: str, ns_dev: int, ns_ino: int) -> str:
    """A sandbox's lock key: its netns identity while it has one (an ADD locks before it
    knows which sandbox its netns is), else its id (recorded in an earlier boot)."""
    return f"ns:{ns_dev}:{ns_ino}" if (ns_dev, ns_ino) != (0, 0) else f"sb:{sandbox_id}"


def _offset(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big")


class KeyedLocks:
    """Exclusive locks named by keys, all in one file (one byte per key)."""

    def __init__(self, path: str):
        self.path = path

    def _open(self) -> int:
        old = os.umask(0o077)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        finally:
            os.umask(old)

    @staticmethod
    def _try(fd: int, offset: int) -> bool:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
            return True
        except OSError as exc:
            if exc.errno in (11, 13):  # EAGAIN, EACCES: held by someone else
                return False
            raise

    @contextmanager
    def held(self, key: str, timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
        """Hold the lock of `key` for the block; LockTimeout after `timeout` seconds.
        (Polled: a blocking OFD lock cannot time out, and waits are rare and short.)"""
        fd = self._open()
        try:
            offset, delay = _offset(key), 0.0005
            deadline = time.monotonic() + timeout
            while not self._try(fd, offset):
                if time.monotonic() > deadline:
                    raise LockTimeout(f"{key} is busy: no lock in {timeout:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextmanager
    def try_held(self, key: str) -> Iterator[bool]:
        """The lock of `key` for the block if it is free now; yields whether it was."""
        fd = self._open()
        try:
            yield self._try(fd, _offset(key))
        finally:
            os.close(fd)
