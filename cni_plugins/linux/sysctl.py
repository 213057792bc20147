"""sysctl through /proc/sys, optionally inside another network namespace.

/proc/sys/net/* resolves to the netns of the thread that opens the file, so
entering the netns around open() is enough; no mount namespace games.
"""

from __future__ import annotations

import os

from . import netns

ROOT = "/proc/sys"


def _path(key: str) -> str:
    return os.path.join(ROOT, key.replace(".", "/") if "/" not in key else key.lstrip("/"))


def read(key: str, netns_fd: int | None = None) -> str:
    if netns_fd is None:
        with open(_path(key)) as f:
            return f.read().strip()
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
