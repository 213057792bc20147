"""Who still uses a network namespace: tasks in it, descriptors of it, mounts of it.

For the sweeps only (it reads all of /proc): a namespace held by nothing but our own pin
is one every runtime has let go of. What cannot be seen from here (a mount in a mount
namespace no visible process is in) cannot be ruled out by this module, which is why the
caller also requires the runtime's own path to be gone.
"""

from __future__ import annotations

import os


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


def users(dev: int, ino: int, ignore_mounts: tuple[str, ...] = ()) -> list[str]:
    """What holds netns (dev, ino) besides the mounts at `ignore_mounts`: "task PID",
    "fd PID/N" or "mount PATH" entries (empty: nothing visible from here)."""
    found: list[str] = []
    link = f"net:[{ino}]"
    mount_namespaces: dict[int, str] = {}
    for pid in _pids():
        base = f"/proc/{pid}"
        try:
            for tid in os.listdir(f"{base}/task"):
                st = os.stat(f"{base}/task/{tid}/ns/net")
                if (st.st_dev, st.st_ino) == (dev, ino):
                    found.append(f"task {tid}")
                    break
        except OSError:
            pass
        try:
            for fd in os.listdir(f"{base}/fd"):
                try:
                    if os.readlink(f"{base}/fd/{fd}") == link:
                        found.append(f"fd {pid}/{fd}")
                except OSError:
                    continue
        except OSError:
            pass
        try:
            mount_namespaces.setdefault(os.stat(f"{base}/ns/mnt").st_ino, pid)
        except OSError:
            pass
    ignored = {os.path.realpath(p) for p in ignore_mounts if p}
    for pid in sorted(mount_namespaces.values()):
        try:
            with open(f"/proc/{pid}/mountinfo") as f:
                lines = f.readlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 5 or fields[3] != link:
                continue
            point = fields[4].replace("\\040", " ")
            if point in ignored:  # our pin, or its copy propagated into another mount namespace
                continue
            found.append(f"mount {point}")
    return sorted(set(found))

