"""Is the network namespace of a cached attachment provably gone?

libcni's result cache (shared by containerd, CRI-O, podman and cnitool) records the netns
path each attachment was ADDed with. A GC that has no list of valid attachments from the
runtime may DEL only an attachment whose namespace is provably dead; anything uncertain
is kept, since a wrong DEL cuts a running container off the network.

Gone:  the path no longer exists while its directory does (the runtime unmounted and
       removed it: podman, containerd, CRI-O, `ip netns del`), or it is
       /proc/<pid>/ns/net of a process that no longer exists (with /proc mounted).
Kept:  the path is a live namespace; no path was cached; the path is relative; it exists
       but is no mounted namespace here (a mount this mount namespace cannot see - cnmctl
       in a container without mount propagation - or a runtime that died between unmount
       and unlink); its directory is not there (another mount namespace, no /proc); it
       cannot be read. The caller adds more: cnmctl runs in another mount namespace than
       PID 1 (foreign_mount_namespace); the namespace our store recorded for the attachment
       is still used by a task, a descriptor or a mount other than our pin, or its users
       cannot be seen from here (the node-wide gc's standard, cni_plugins/liveness.py); no
       store recorded it and the path is a process's (under /proc: a process that exited,
       or closed a descriptor, says nothing about who else holds the namespace).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ..linux import netns as nsmod

_PROC_NETNS = re.compile(r"/proc/(\d+)/(?:task/\d+/)?ns/net")


@dataclass(frozen=True)
class Verdict:
    gone: bool
    reason: str


def judge(path: str) -> Verdict:
    """Whether the namespace at `path` is provably gone, and why (or why it is kept)."""
    if not path:
        return Verdict(False, "no netns path in the cache entry (nor a sandbox in its result)")
    if not os.path.isabs(path):
        return Verdict(False, f"netns path {path!r} is not absolute")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _missing(path)
    except OSError as exc:
        return Verdict(False, f"cannot stat {path}: {exc.strerror}")
    if st.st_dev == nsmod.nsfs_dev() and not stat.S_ISDIR(st.st_mode):
        return Verdict(False, f"{path} is a live namespace")
    return Verdict(False, f"{path} exists but is no mounted namespace here (remove the file if its "
                          f"namespace is really gone, or run cnmctl in the runtime's mount namespace)")


def _missing(path: str) -> Verdict:
    proc = _PROC_NETNS.fullmatch(path)
    if proc:
        if not os.path.exists("/proc/self/ns/net"):
            return Verdict(False, f"{path} is missing, but /proc is not mounted here")
        if os.path.exists(f"/proc/{proc.group(1)}"):
            return Verdict(False, f"{path} is missing, but process {proc.group(1)} exists")
        return Verdict(True, f"process {proc.group(1)} is gone")
    if os.path.lexists(path):  # a dangling symlink: where it pointed is not ours to judge
        return Verdict(False, f"{path} is a symlink to a missing file")
    directory = os.path.dirname(path)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return Verdict(False, f"{path} is missing, but so is {directory} (another mount namespace?)")
    except OSError as exc:
        return Verdict(False, f"cannot stat {directory}: {exc.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return Verdict(False, f"{directory} is not a directory")
    return Verdict(True, f"{path} no longer exists")


def foreign_mount_namespace() -> str:
    """Why paths cannot be judged from here ("" when they can): this process runs in
    another mount namespace than PID 1, so the runtime's mounts may be invisible or
    different. Unknown (PID 1's namespace unreadable) counts as the same."""
    try:
        mine, init = os.stat("/proc/self/ns/mnt"), os.stat("/proc/1/ns/mnt")
    except OSError:
        return ""
    if (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino):
        return ""
    return "cnmctl runs in another mount namespace than PID 1 (run it on the host)"


def names_a_process(path: str) -> bool:
    """`path` lies under /proc (symlinks followed as far as they resolve): it names a
    process's namespace or descriptor, not a mount a runtime made and removed."""
    directory = os.path.realpath(os.path.dirname(path))
    return directory == "/proc" or directory.startswith("/proc/")
