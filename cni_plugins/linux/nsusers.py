"""Who still uses a network namespace: tasks in it, descriptors of it, mounts of it.

For the sweeps only (it reads all of /proc): a namespace held by nothing but our own pin
is one every runtime has let go of. What cannot be seen from here (a mount in a mount
namespace no visible process is in) cannot be ruled out by this module, which is why the
caller also requires the runtime's own path to be gone.
"""

from __future__ import annotations

import os

from .netns import entered


def pid_namespace() -> int | None:
    """This process's pid namespace (its inode), or None: which processes /proc shows."""
    return _namespace("pid")


def mount_namespace() -> int | None:
    """This process's mount namespace (its inode), or None: which mounts it sees."""
    return _namespace("mnt")


def _namespace(kind: str) -> int | None:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def _pids() -> list[str]:
    try:
        return [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


class Users:
    """Who holds which network namespace, read from /proc once (for one sweep): tasks in it,
    descriptors of it, mounts of it in every mount namespace a visible process is in."""

    def __init__(self):
        self.tasks: dict[tuple[int, int], list[str]] = {}
        self.fds: dict[int, list[str]] = {}  # netns inode -> "fd PID/N"
        self.mounts: dict[int, list[str]] = {}  # netns inode -> mount points
        mount_namespaces: dict[int, str] = {}
        by_path: list[tuple[str, str, str]] = []  # (pid, fd, link) of descriptors opened by a path
        for pid in _pids():
            base = f"/proc/{pid}"
            try:
                tids = os.listdir(f"{base}/task")
            except OSError:
                tids = []
            for tid in tids:
                try:  # (a task that ends meanwhile must not hide its siblings)
                    st = os.stat(f"{base}/task/{tid}/ns/net")
                except OSError:
                    continue
                self.tasks.setdefault((st.st_dev, st.st_ino), []).append(f"task {tid}")
            try:
                for fd in os.listdir(f"{base}/fd"):
                    try:
                        link = os.readlink(f"{base}/fd/{fd}")
                    except OSError:
                        continue
                    if link.startswith("net:["):
                        self.fds.setdefault(int(link[5:-1]), []).append(f"fd {pid}/{fd}")
                    elif link.startswith("/"):
                        by_path.append((pid, fd, link))
            except OSError:
                pass
            try:
                mount_namespaces.setdefault(os.stat(f"{base}/ns/mnt").st_ino, pid)
            except OSError:
                pass
        for pid in sorted(mount_namespaces.values()):
            try:
                with open(f"/proc/{pid}/mountinfo") as f:
                    lines = f.readlines()
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) >= 5 and fields[3].startswith("net:["):
                    point = fields[4].replace("\\040", " ")
                    self.mounts.setdefault(int(fields[3][5:-1]), []).append(point)
        # A namespace opened through a mount of it (`open("/run/netns/x")`) shows as that
        # path, or as "/" once the mount is detached (`ip netns del`): ask the descriptor.
        points = {p for ps in self.mounts.values() for p in ps}
        for pid, fd, link in by_path:
            if link == "/" or link in points:
                ino = _descriptor_inode(pid, fd)
                if ino is not None:
                    self.fds.setdefault(ino, []).append(f"fd {pid}/{fd}")

    def of(self, dev: int, ino: int, ignore_under: tuple[str, ...] = ()) -> list[str]:
        """What holds netns (dev, ino) besides mounts below the `ignore_under` directories
        (pins: ours, another store's, and their copies propagated into other mount namespaces):
        empty when nothing visible does."""
        roots = tuple(os.path.realpath(p).rstrip("/") + "/" for p in ignore_under if p)
        found = list(self.tasks.get((dev, ino), [])) + list(self.fds.get(ino, []))
        found += [f"mount {p}" for p in self.mounts.get(ino, []) if not p.startswith(roots)]
        return sorted(set(found))


# /proc/net files of the reading thread's netns that list sockets (header line first), with
# the column of a row's inode: 0 for a socket no descriptor owns (TIME_WAIT, an orphan
# closing): no process can use it again, and it does not keep the netns alive.
SOCKET_TABLES = {"tcp": 9, "tcp6": 9, "udp": 9, "udp6": 9, "raw": 9, "raw6": 9, "udplite": 9, "udplite6": 9,
                 "unix": 6, "packet": 8, "netlink": 9}


def sockets_in(netns_fd: int) -> list[str]:
    """Sockets that live in the netns (a socket keeps its netns alive, and its owner may have
    left it: a process that entered it, opened a listening socket and came back), as
    "<table>: <count>"; netlink sockets of the kernel itself (port 0) and sockets without an
    owner (inode 0) are not counted."""
    found: list[str] = []
    # On this thread, and back before returning: a thread of its own that ended in the netns
    # could linger there for a moment as a task, which the next sweep would take for a user.
    with entered(netns_fd):
        for table, inode_column in SOCKET_TABLES.items():
            try:
                with open(f"/proc/thread-self/net/{table}") as f:
                    rows = [r.split() for r in f.read().splitlines()[1:]]
            except OSError:
                continue
            owned = [r for r in rows if len(r) > inode_column and r[inode_column] != "0"]
            if table == "netlink":
                owned = [r for r in owned if r[2] != "0"]
            if owned:
                found.append(f"{table}: {len(owned)}")
    return found


def _descriptor_inode(pid: str, fd: str) -> int | None:
    """The inode descriptor `fd` of `pid` is open on, if it may be a namespace: from its
    fdinfo, which touches no file system (a stat of a namespace's descriptor is as safe,
    for a kernel whose fdinfo has no inode)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("ino:"):
                    return int(line.split()[1])
        st = os.stat(f"/proc/{pid}/fd/{fd}")
    except (OSError, ValueError, IndexError):
        return None
    return st.st_ino if st.st_dev == _nsfs_dev() else None


def _nsfs_dev() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None
