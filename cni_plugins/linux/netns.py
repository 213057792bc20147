"""Network namespaces: open, identify, enter, create, pin (bind mount), remove.

Stdlib only (ctypes for setns/unshare/mount), so the entry path stays lean.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from .fs import make_dirs

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
# The calling thread's netns, not the thread group leader's (/proc/self): identical in a
# plugin process, and right in a helper thread that serves a caller from another netns.
SELF = "/proc/thread-self/ns/net" if os.path.exists("/proc/thread-self/ns/net") else "/proc/self/ns/net"
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """CNI_NETNS cannot be used: it is missing, not a namespace, or setns failed."""


@dataclass(frozen=True)
class Identity:
    """A network namespace's nsfs identity: equal identities are the same namespace."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}"


def identity_of(path_or_fd: str | int) -> Identity:
    st = os.stat(path_or_fd)
    return Identity(st.st_dev, st.st_ino)


def own_identity() -> Identity:
    """The namespace this process runs in: the host's, for a plugin exec'd by a runtime."""
    return identity_of(SELF)


def nsfs_dev() -> int:
    return os.stat(SELF).st_dev


def open_netns(path: str) -> int:
    """Open CNI_NETNS; NetnsError if it does not exist or is not an nsfs file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, "network namespace does not exist", path) from None
    except OSError as exc:
        raise NetnsError(exc.errno, f"cannot open network namespace: {exc.strerror}", path) from None
    if not is_netns_fd(fd):
        os.close(fd)
        raise NetnsError(errno.EINVAL, "not a network namespace (no nsfs mount)", path)
    return fd


NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is


def is_netns_fd(fd: int) -> bool:
    """An nsfs file of a *network* namespace (/proc/<pid>/ns/pid is nsfs too, but setns fails)."""
    st = os.fstat(fd)
    if st.st_dev != nsfs_dev() or stat.S_ISDIR(st.st_mode):
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns failed: {os.strerror(err)}")


@contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block in another netns (this thread only) and always come back.

    Sockets opened inside stay bound to that namespace after the block.
    """
    home = os.open(SELF, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def bind_mount(source: str, target: str) -> None:
    if _libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} -> {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Detach a bind mount; absent or not-mounted targets are fine."""
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def pin(source_fd: int, target: str) -> None:
    """Bind-mount an open netns onto `target` so it outlives every process in it. Whatever is
    mounted there already is a leftover (of a command that died before recording it): it is
    detached first, so mounts never stack."""
    try:  # the mount point; its directory is made only the first time (one syscall per pin)
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        _unmount_all(target)
    except FileNotFoundError:
        make_dirs(os.path.dirname(target), 0o700)
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    bind_mount(f"/proc/self/fd/{source_fd}", target)


def unpin(target: str) -> None:
    _unmount_all(target)
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


def _unmount_all(target: str) -> None:
    """Detach every mount stacked on `target` (until the kernel says nothing is mounted)."""
    for _ in range(64):
        if _libc.umount2(target.encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def create_named(name: str) -> str:
    """`ip netns add NAME`: a fresh netns bind-mounted at /run/netns/NAME (tests, cnmctl run)."""
    path = os.path.join(NETNS_RUN_DIR, name)
    make_dirs(NETNS_RUN_DIR, 0o755)  # as `ip netns add`
    # unshare() moves this thread into the new netns; do it in a child so we stay home.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                os._exit(1)
            fd = os.open(SELF, os.O_RDONLY)
            pin(fd, path)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"could not create network namespace {name}")
    return path


def remove_named(name_or_path: str) -> None:
    path = name_or_path if "/" in name_or_path else os.path.join(NETNS_RUN_DIR, name_or_path)
    unpin(path)


SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h (Linux 5.14)


def cookie(fd: int) -> int | None:
    """The netns's cookie: a 64-bit number the kernel never gives another namespace (unlike the
    nsfs inode, which a new namespace may get once the old one is gone). None when the kernel
    has no SO_NETNS_COOKIE."""
    try:
        with entered(fd):  # a socket belongs to the netns it is made in
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with sock:
            return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    except OSError:
        return None
