"""Directories with an exact mode, whatever the caller's umask.

os.makedirs(path, mode) applies `mode` to the last component only, and through the
umask: under a runtime's umask 000 the parents it makes are 0777, so
`/run/cnm/netns` (0700) could sit in a world-writable `/run/cnm`. make_dirs gives every
directory it creates exactly `mode` and leaves every existing one alone (never chmods
a directory it did not make).
"""

from __future__ import annotations

import os
import stat

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_dirs(path: str, mode: int) -> None:
    """`mkdir -p` where each directory made is `mode` exactly (mkdir, then fchmod of what
    mkdir made). Components are resolved as the kernel will resolve them later: in
    "a/b/../c", "a/b" is made too, since opening "a/b/../c/x" needs it. An existing
    non-directory raises FileExistsError, as os.makedirs(exist_ok=True)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/"))
        if not parent or parent == path:
            raise
        make_dirs(parent, mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:  # made meanwhile by another process (or "..", "."): not ours
            if not os.path.isdir(path):
                raise
            return
    _exact_mode(path, mode)


def _exact_mode(path: str, mode: int) -> None:
    """The umask may have narrowed what mkdir made (never widened it): set `mode` itself,
    on the directory just made (O_NOFOLLOW: not on whatever a symlink swapped in points to)."""
    fd = os.open(path, _OPEN_DIR)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
