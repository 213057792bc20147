"""sysctl through /proc/sys, optionally inside another network namespace.

/proc/sys/net/* resolves to the netns of the thread that opens the file, so
entering the netns around open() is enough; no mount namespace games.

What a lookup costs: /proc/sys/net is one dentry, but its children (ipv4, ipv6,
core...) resolve per netns, so every netns that has looked one up leaves a dentry
of that name there, all in one hash chain, and the kernel compares each on every
lookup (measured: ~0.1-1 ms per open() with 1,000 pod netns on the node). So a
container's knobs are set with one open of /proc/sys/net (`try_write_all`), and the
host's are read and written through descriptors kept open per netns (`read`,
`ensure`, `try_write_under`): a resident helper pays the lookups once. A kept
descriptor never pins its netns; once that netns is gone its reads fail with
ENOENT and it is opened again.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator

from . import netns

ROOT = "/proc/sys"
NET = "/proc/sys/net"
_KEPT_MAX = 32  # (netns, directory) descriptor pairs; a few host netns x a few directories
_kept_dirs: OrderedDict[tuple[netns.Identity, str], tuple[int, int]] = OrderedDict()
_kept_lock = threading.Lock()


def _path(key: str) -> str:
    return os.path.join(ROOT, key.replace(".", "/") if "/" not in key else key.lstrip("/"))


def read(key: str, netns_fd: int | None = None) -> str:
    """In this thread's netns through a descriptor kept open for `key` (one pread; an ADD
    checks ip_forward and the bridge's accept_ra every time), else inside `netns_fd`."""
    if netns_fd is None:
        with _kept_file(key) as fd:
            return os.pread(fd, 4096, 0).decode().strip()
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


def try_ensure(key: str, value: str) -> bool:
    """Best-effort `ensure` in this thread's netns; False when the knob is missing or read-only."""
    try:
        ensure(key, value)
        return True
    except OSError:
        return False


def try_write_all(settings: list[tuple[str, str]], netns_fd: int) -> list[str]:
    """Best effort, in another netns, with one open of /proc/sys/net: `settings` are (key under
    net/, value). Returns the keys that could not be set."""
    with netns.entered(netns_fd):
        try:
            net = os.open(NET, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return [key for key, _ in settings]
        try:
            return _write_all(net, settings)
        finally:
            os.close(net)


def try_write_under(directory: str, settings: list[tuple[str, str]]) -> list[str]:
    """Best effort, in this thread's netns, through `directory` (under net/, e.g. ipv6/conf)
    kept open per netns: `settings` are (key under it, value). Returns the keys not set."""
    try:
        with _kept_dir(directory) as fd:
            return _write_all(fd, settings)
    except OSError:
        return [key for key, _ in settings]


_PROBE = "/proc/sys/net/ipv4/ip_forward"  # exists in every netns
_kept_files: OrderedDict[tuple[netns.Identity, str], tuple[int]] = OrderedDict()


@contextmanager
def _kept(cache: OrderedDict, slot: tuple, open_new) -> Iterator[tuple[int, ...]]:
    """Descriptors of this thread's netns kept in `cache` under `slot`, the last one a probe:
    once what they belong to (the netns, a device) is gone, reads of the probe fail with ENOENT
    and `open_new()` opens them again."""
    with _kept_lock:
        fds = cache.pop(slot, None)  # taken: no other thread closes them meanwhile
    if fds is not None:
        try:
            os.pread(fds[-1], 16, 0)
        except OSError:
            _close_all(fds)
            fds = None
    if fds is None:
        fds = open_new()
    try:
        yield fds
    finally:
        with _kept_lock:
            spare = cache.pop(slot, None)  # another thread's, kept meanwhile
            cache[slot] = fds
            while len(cache) > _KEPT_MAX:
                _close_all(cache.popitem(last=False)[1])
        if spare is not None:
            _close_all(spare)


@contextmanager
def _kept_file(key: str) -> Iterator[int]:
    """`key` of this thread's netns, open for reading and kept (its own probe): a bridge deleted
    and made again under the same name is read afresh."""

    def open_new() -> tuple[int]:
        net = os.path.relpath(_path(key), NET)
        if net.startswith(".."):
            return (os.open(_path(key), os.O_RDONLY | os.O_CLOEXEC),)
        top, name = net.split("/", 1)
        with _kept_dir(top) as directory:  # no lookup of net/<top> (see the module doc)
            return (os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory),)

    with _kept(_kept_files, (netns.own_identity(), key), open_new) as (fd,):
        yield fd


@contextmanager
def _kept_dir(directory: str) -> Iterator[int]:
    """net/`directory` of this thread's netns, kept open (O_PATH) with a probe file of the same
    netns beside it: once that netns is gone, reads of the probe fail with ENOENT, while a name
    looked up in the directory could just be missing."""

    def open_new() -> tuple[int, int]:
        fd = os.open(os.path.join(NET, directory), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return fd, os.open(_PROBE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise

    with _kept(_kept_dirs, (netns.own_identity(), directory), open_new) as (fd, _probe):
        yield fd


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def _write_all(net: int, settings: list[tuple[str, str]]) -> list[str]:
    failed = []
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
    return failed
