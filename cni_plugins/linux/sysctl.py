"""sysctl through /proc/sys, optionally inside another network namespace.

/proc/sys/net/* resolves to the netns of the thread that opens the file, so
entering the netns around open() is enough; no mount namespace games.

What a lookup costs: every netns that has touched /proc/sys/net leaves a dentry
named "net" under /proc/sys, all in one hash chain, and the kernel compares each
on every lookup of that name (~0.1-1 ms per open() with 1,000 pods on the node).
So a container's knobs are set with one lookup of /proc/sys/net (`write_all`),
and the host's are read through a descriptor kept open per netns (`read`,
`ensure`): a resident helper pays the lookup once. A kept descriptor never pins
its netns; once that netns is gone it fails with ENOENT and is opened again.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict

from . import netns

ROOT = "/proc/sys"
NET = "/proc/sys/net"
_KEPT_MAX = 32  # (netns, key) descriptors; a few host netns x a few knobs
_kept: OrderedDict[tuple[int, int, str], int] = OrderedDict()
_kept_lock = threading.Lock()


def _path(key: str) -> str:
    return os.path.join(ROOT, key.replace(".", "/") if "/" not in key else key.lstrip("/"))


def _own_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _read_kept(key: str) -> str:
    """`key` in this thread's netns, through a descriptor kept for that (netns, key)."""
    dev, ino = _own_netns()
    slot = (dev, ino, _path(key))
    for _attempt in range(2):
        with _kept_lock:
            fd = _kept.get(slot)
            if fd is not None:
                _kept.move_to_end(slot)
        if fd is None:
            fd = os.open(slot[2], os.O_RDONLY | os.O_CLOEXEC)
            with _kept_lock:
                _kept[slot] = fd
                while len(_kept) > _KEPT_MAX:
                    os.close(_kept.popitem(last=False)[1])
        try:
            return os.pread(fd, 4096, 0).decode().strip()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # That netns is gone and another got its inode number: open afresh.
            with _kept_lock:
                if _kept.get(slot) == fd:
                    del _kept[slot]
                    os.close(fd)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), slot[2])


def read(key: str, netns_fd: int | None = None) -> str:
    if netns_fd is None:
        return _read_kept(key)
    with netns.entered(netns_fd):
        with open(_path(key)) as f:
            return f.read().strip()


def write(key: str, value: str, netns_fd: int | None = None) -> None:
    """Set `key` (dotted or slash form; use slashes when a part holds a dot, e.g. an ifname)."""
    if netns_fd is None:
        with open(_path(key), "w") as f:
            f.write(value)
        return
    with netns.entered(netns_fd):
        with open(_path(key), "w") as f:
            f.write(value)


def ensure(key: str, value: str, netns_fd: int | None = None) -> None:
    """Write only when different (avoids needless writes to global knobs like ip_forward)."""
    if read(key, netns_fd) != value:
        write(key, value, netns_fd)


def try_write(key: str, value: str, netns_fd: int | None = None) -> bool:
    """Best effort (a knob may not exist, e.g. IPv6 disabled); True when written."""
    try:
        write(key, value, netns_fd)
        return True
    except OSError:
        return False


def try_ensure(key: str, value: str) -> bool:
    """Best-effort `ensure` in this thread's netns; False when the knob is missing or read-only."""
    try:
        ensure(key, value)
        return True
    except OSError:
        return False


def try_write_all(settings: list[tuple[str, str]], netns_fd: int) -> list[str]:
    """Best effort, in another netns, with one lookup of /proc/sys/net: `settings` are
    (key under net/, value). Returns the keys that could not be set."""
    failed = []
    with netns.entered(netns_fd):
        try:
            net = os.open(NET, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return [key for key, _ in settings]
        try:
            for key, value in settings:
                try:
                    fd = os.open(key, os.O_WRONLY | os.O_CLOEXEC, dir_fd=net)
                except OSError:
                    failed.append(key)
                    continue
                try:
                    os.write(fd, value.encode())
                except OSError:
                    failed.append(key)
                finally:
                    os.close(fd)
        finally:
            os.close(net)
    return failed
