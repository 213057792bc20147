"""host-local's on-disk lease store, byte for byte.

<dataDir>/<network>/<ip>                 "containerID\\r\\nifname" (no newline), 0600, O_EXCL
<dataDir>/<network>/last_reserved_ip.<n> last IP reserved in range set n, 0600
<dataDir>/<network>/lock                 flock(LOCK_EX) around every read-modify-write

Go host-local and cnm-ipam take the same flock on the same file, so they can
replace each other on a live node. Every file operation goes through a
descriptor of the network directory (dir_fd), so a name can never escape it.

Who holds which address (`Leases`) is read under the flock: a one-shot process
lists the directory and reads every lease file, once per locked section. A
long-lived process (the helper, after `keep_index()`) keeps it per directory,
exact by an inotify watch (index.py), and re-reads only the files that changed. The
lease file format and `Leases` are in leases.py, below both.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager
from typing import Iterator

from ..cni.paths import state_path_problem
from ..linux.fs import make_dirs
from .leases import Leases, owner_text, parse_owner, scan
from .ranges import IP

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
DIR_MODE = 0o755  # host-local's mode, so Go can share the directory
FILE_MODE = 0o600


class PathError(ValueError):
    """dataDir or the network name would put files outside dataDir."""


def lease_dir_path(data_dir: str, network: str) -> str:
    """<dataDir>/<network>, refusing anything that is not a plain child of an absolute dataDir."""
    problem = state_path_problem(data_dir)
    if problem:
        raise PathError(f"dataDir={problem}")
    if (
        not network
        or network in (".", "..")
        or "/" in network
        or "\0" in network
        or network != os.path.basename(os.path.normpath(os.path.join("/", network)))
    ):
        raise PathError(f"network name {network!r} cannot be a directory name")
    root = os.path.normpath(data_dir)
    path = os.path.join(root, network)
    if os.path.dirname(path) != root:
        raise PathError(f"network name {network!r} leaves dataDir")
    return path


_index_enabled = False


def keep_index(enabled: bool = True) -> None:
    """Keep each lease directory's Leases between commands, exact by inotify (the helper)."""
    global _index_enabled
    if enabled:
        from . import index  # noqa: F401  (ctypes and the inotify binding: the helper's, not every exec's)
    _index_enabled = enabled


class LeaseDir:
    """The lease directory of one network. Use `with store.locked():` around changes."""

    def __init__(self, data_dir: str, network: str, create: bool = True):
        self.path = lease_dir_path(data_dir, network)
        # O_NOFOLLOW: a symlink planted as <dataDir>/<network> must not redirect the leases.
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.fd = os.open(self.path, flags)
        except FileNotFoundError:  # (made on the network's first ADD only: no make_dirs after)
            if not create:
                raise
            make_dirs(self.path, DIR_MODE)
            self.fd = os.open(self.path, flags)
        self._lock_fd: int | None = None
        self._locked = False
        self._view: Leases | None = None  # valid while locked
        self._index = None  # index.DirIndex held while locked

    @classmethod
    def existing(cls, data_dir: str, network: str) -> "LeaseDir | None":
        """The directory if it exists; None otherwise (DEL, CHECK, GC create nothing)."""
        try:
            return cls(data_dir, network, create=False)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        os.close(self.fd)

    def __enter__(self) -> "LeaseDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the lock ----------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator["LeaseDir"]:
        """Exclusive flock on <dir>/lock, the one go-filemutex takes."""
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644, dir_fd=self.fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked = True
            try:
                yield self
            finally:
                self._locked = False
                self._view = None
                if self._index is not None:
                    self._index.release()
                    self._index = None
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def lease_view(self) -> Leases:
        """Who holds what now. Under the lock: read once (or synced from the helper's index) and
        kept current by reserve/release until the lock is released; without it: a fresh scan."""
        if self._view is not None:
            return self._view
        if not self._locked:
            return scan(self)
        view = None
        if _index_enabled:
            from . import index

            self._index = index.acquire(self)
            if self._index is not None:
                view = self._index.leases
        self._view = view if view is not None else scan(self)
        return self._view

    # ---- files -------------------------------------------------------------------------
    def _write_new(self, name: str, data: bytes) -> bool:
        """Create `name` exclusively with `data`; False when it exists already."""
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE,
                         dir_fd=self.fd)
        except FileExistsError:
            return False
        try:
            os.fchmod(fd, FILE_MODE)  # exact mode whatever the umask
            _write_all(fd, data)
        except OSError:
            os.close(fd)
            self._unlink(name)
            raise
        os.close(fd)
        return True

    def _replace(self, name: str, data: bytes) -> None:
        """Overwrite `name` in place (under the lock), then cut it to the new length. Not
        O_TRUNC: ext4 flushes a file truncated to zero when it is closed (auto_da_alloc),
        a synchronous write of ~2 ms per ADD on a busy disk, for a hint (last_reserved_ip)
        whose loss only costs round-robin once."""
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE, dir_fd=self.fd)
        try:
            os.fchmod(fd, FILE_MODE)
            _write_all(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _read(self, name: str) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError:
            return None
        try:
            chunk = os.read(fd, 65536)
            if len(chunk) < 65536:  # a short read of a regular file is its end: no second read
                return chunk
            chunks = [chunk]
            while chunk:
                chunk = os.read(fd, 65536)
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _unlink(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self.fd)
            return True
        except FileNotFoundError:
            return False

    read = _read  # a file of this directory, None when absent or unreadable (leases.LeaseFiles)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace `name` by a complete new file (temp file + rename)."""
        tmp = f".{name}.tmp"
        self._unlink(tmp)
        self._write_new(tmp, data)
        os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def remove(self, name: str) -> bool:
        return self._unlink(name)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    # ---- leases ------------------------------------------------------------------------
    def reserve(self, addr: IP, container_id: str, ifname: str, set_index: int) -> bool:
        """host-local's Reserve: exclusive create of the lease, then last_reserved_ip.<n>."""
        name = str(addr)
        text = owner_text(container_id, ifname)
        if not self._write_new(name, text.encode()):
            return False
        try:
            self._replace(f"{LAST_RESERVED_PREFIX}{set_index}", name.encode())
        except OSError:
            self._unlink(name)
            raise
        if self._view is not None:
            self._view.put(name, parse_owner(text))  # what reading the file back gives
        return True

    def release(self, addr: IP) -> bool:
        name = str(addr)
        removed = self._unlink(name)
        if self._view is not None:
            self._view.discard(name)  # gone either way
        return removed

    def last_reserved(self, set_index: int) -> IP | None:
        data = self._read(f"{LAST_RESERVED_PREFIX}{set_index}")
        if not data:
            return None
        try:
            return ipaddress.ip_address(data.decode(errors="replace").strip())
        except ValueError:
            return None  # host-local also just loses round-robin once

    def leases(self) -> dict[IP, tuple[str, str | None]]:
        """Every lease: address -> (containerID, ifname or None for a legacy file)."""
        view = self.lease_view()
        return {view.addr(name): owner for name, owner in view.owners.items()}

    def find(self, container_id: str, ifname: str) -> list[IP]:
        """The attachment's leases; files of the legacy format count when they hold the id."""
        view = self.lease_view()
        held = view.held_by(container_id.strip())
        return sorted((view.addr(name) for name, owner_if in held.items() if owner_if in (ifname, None)),
                      key=_sort_key)

    def release_owner(self, container_id: str, ifname: str) -> list[IP]:
        """host-local's ReleaseByID: the (id, ifname) leases, else the legacy id-only ones."""
        view = self.lease_view()
        held = view.held_by(container_id.strip())
        matched = [view.addr(name) for name, owner_if in held.items() if owner_if == ifname]
        if not matched:
            matched = [view.addr(name) for name, owner_if in held.items() if owner_if is None]
        return sorted((a for a in matched if self.release(a)), key=_sort_key)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sort_key(addr: IP) -> tuple[int, int]:
    return addr.version, int(addr)

