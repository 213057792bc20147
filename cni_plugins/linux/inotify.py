"""inotify(7) for one directory, through libc (Python's stdlib has none).

Three calls (inotify_init1, inotify_add_watch, read) and the event layout, and
fstatfs to tell whether the directory's filesystem reports every change to a
local watch. ctypes rather than a dependency: the binding is this small, its
ABI has not changed since Linux 2.6.27, and the helper that uses it (cnmd)
already loads ctypes; nothing on the one-shot path imports this module.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Every change of a child's existence or content, and of the directory's own place (the
# *_SELF events are only reported when asked for; IN_IGNORED, IN_Q_OVERFLOW, IN_UNMOUNT always).
CHILD_CHANGES = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB
                 | IN_DELETE_SELF | IN_MOVE_SELF)
# The watch itself is gone, moved or incomplete: what it saw so far can no longer be trusted.
LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT

# Local filesystems whose changes all go through this kernel's VFS (so every change is
# queued to a watch): ext2/3/4, xfs, btrfs, tmpfs, ramfs, overlayfs, f2fs, zfs, bcachefs.
# Network and FUSE filesystems can change behind the kernel's back: no index on them.
LOCAL_FILESYSTEMS = frozenset({
    0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x858458F6, 0x794C7630, 0xF2F52010, 0x2FC12FC1, 0xCA451A4E,
})

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event)
_READ_SIZE = 65536
_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def filesystem_type(fd: int) -> int:
    """f_type of fstatfs(2): the first field of struct statfs (a native long on every ABI)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit, 64-84 on 32-bit
    _check(_libc.fstatfs(fd, buf))
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


class DirWatch:
    """A non-blocking inotify instance watching one directory (by descriptor), or more (`add`)."""

    def __init__(self, dir_fd: int, mask: int = CHILD_CHANGES):
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        try:
            # The magic link names the very directory dir_fd holds, wherever it is now.
            path = f"/proc/self/fd/{dir_fd}".encode()
            self.wd = _check(_libc.inotify_add_watch(self.fd, path, mask | IN_ONLYDIR))
        except BaseException:
            os.close(self.fd)
            raise

    def add(self, dir_fd: int, mask: int = CHILD_CHANGES) -> int:
        """Watch one more directory on the same queue; its events carry the returned wd."""
        path = f"/proc/self/fd/{dir_fd}".encode()
        return _check(_libc.inotify_add_watch(self.fd, path, mask | IN_ONLYDIR))

    def read(self) -> list[tuple[int, int, str]]:
        """Every queued event as (wd, mask, name); [] when none is queued."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset:offset + length].rstrip(b"\0")
                offset += length
                events.append((wd, mask, os.fsdecode(name)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
