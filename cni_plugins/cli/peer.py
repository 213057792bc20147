"""Who is on the other end of a helper connection: the caller's process context, read from the
kernel, never from what the caller says.

cnmd runs a request as its caller would have run it in-process only when the caller is no
less than the helper: the same mount, user and pid namespaces and root directory (so every
path, CNI_PATH and the working directory handed over included, names what it names for the
caller), the same credentials and capability sets, no_new_privs, seccomp mode and LSM label.
Anyone else is refused and runs the command itself, with what it has.

The process is the one that connected (SO_PEERCRED's pid), pinned by a pidfd so that a pid
reused meanwhile is never read in its place: SO_PEERPIDFD (Linux 6.5) gives the pidfd of the
connecting process itself; on older kernels pidfd_open(pid) is checked afterwards to be a
process that holds the other end of this connection (sock_diag), which a process that took
over a dead caller's pid does not. Either way, a process that exits while it is read is
refused (its pid could be another's by then).
"""

from __future__ import annotations

import os
import select
import socket
import struct

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
NAMESPACES = ("mnt", "user", "pid")
# /proc/<pid>/status lines that must be equal: credentials, capabilities, confinement.
STATUS_FIELDS = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


class Unverified(Exception):
    """The caller's context cannot be established; str() says why (for the helper's log)."""


def context_of(pid: int) -> tuple[dict[str, str], int]:
    """(context, umask) of process `pid`, from /proc. OSError when it cannot be read."""
    base = f"/proc/{pid}"
    ctx = {}
    for ns in NAMESPACES:
        st = os.stat(f"{base}/ns/{ns}")
        ctx[ns] = f"{st.st_dev}:{st.st_ino}"
    st = os.stat(f"{base}/root")
    ctx["root"] = f"{st.st_dev}:{st.st_ino}"
    umask = None
    with open(f"{base}/status", "rb") as f:
        for line in f:
            key, _, value = line.decode(errors="replace").partition(":")
            if key in STATUS_FIELDS:
                ctx[key] = " ".join(value.split())
            elif key == "Umask":
                umask = int(value.strip(), 8)
    missing = [key for key in STATUS_FIELDS if key not in ctx]
    if missing or umask is None:
        raise OSError(f"{base}/status lacks {', '.join(missing) or 'Umask'}")
    ctx["lsm"] = _lsm_label(base)
    return ctx, umask


def _lsm_label(base: str) -> str:
    try:
        with open(f"{base}/attr/current", "rb") as f:
            return f.read().rstrip(b"\0\n").decode(errors="replace")
    except OSError as exc:  # no LSM that labels processes: the same for everyone
        return f"({exc.errno})"


def caller_context(conn: socket.socket) -> tuple[dict[str, str], int]:
    """(context, umask) of the process that connected `conn`; Unverified if not established."""
    pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    if pid <= 0:
        raise Unverified("the caller is in a pid namespace the helper cannot see")
    pidfd, connecting = _pidfd(conn, pid)
    try:
        try:
            found = context_of(pid)
        except OSError as exc:
            raise Unverified(f"cannot read the context of pid {pid}: {exc}") from None
        if not connecting and not _holds_peer(pid, conn):
            raise Unverified(f"pid {pid} does not hold the connection (a reused pid?)")
        if _exited(pidfd):  # last: alive now, so everything read of pid was of this process
            raise Unverified(f"pid {pid} exited while its context was read")
        return found
    finally:
        os.close(pidfd)


def _pidfd(conn: socket.socket, pid: int) -> tuple[int, bool]:
    """A pidfd of the caller, and whether it is surely the connecting process (SO_PEERPIDFD)."""
    try:
        pidfd = struct.unpack("i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError:
        pidfd = -1
    if pidfd >= 0:
        if _pid_of(pidfd) != pid:
            os.close(pidfd)
            raise Unverified(f"the connecting process (pid {pid}) is gone")
        return pidfd, True
    try:
        return os.pidfd_open(pid), False
    except (OSError, AttributeError) as exc:
        raise Unverified(f"no pidfd for pid {pid}: {exc}") from None


def _pid_of(pidfd: int) -> int:
    """The pid a pidfd refers to, in our pid namespace (-1 once it has exited)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def _exited(pidfd: int) -> bool:
    readable, _, _ = select.select([pidfd], [], [], 0)
    return bool(readable)


def _holds_peer(pid: int, conn: socket.socket) -> bool:
    """Does process `pid` have the other end of `conn` open (kernels without SO_PEERPIDFD)?"""
    peer = _peer_inode(conn)
    if peer is None:
        return False
    wanted = f"socket:[{peer}]"
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def _peer_inode(conn: socket.socket) -> int | None:
    """The inode of the socket at the other end of unix socket `conn` (sock_diag)."""
    from pyroute2 import DiagSocket
    from pyroute2.netlink import NLM_F_REQUEST
    from pyroute2.netlink.diag import SOCK_DIAG_BY_FAMILY, UDIAG_SHOW_PEER, unix_diag_req

    req = unix_diag_req()
    req["sdiag_family"] = socket.AF_UNIX
    req["udiag_states"] = 0xFFFFFFFF
    req["udiag_ino"] = os.fstat(conn.fileno()).st_ino
    req["udiag_show"] = UDIAG_SHOW_PEER
    req["udiag_cookie"] = 0xFFFFFFFFFFFFFFFF  # any: looked up by inode
    try:
        with DiagSocket() as diag:
            diag.bind()
            for msg in diag.nlm_request(req, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST):
                peer = msg.get_attr("UNIX_DIAG_PEER")
                if peer:
                    return peer
    except Exception:  # no sock_diag for unix sockets (module not loaded): unverifiable
        return None
    return None
