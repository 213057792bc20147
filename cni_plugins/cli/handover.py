"""Who listens on a helper socket, and making a helper of another build let go of it.

Every cnmd since protocol 2 answers a request of another build with
`NO "build <ours> != helper build <its>"` (since protocol 3, a caller unlike itself first gets
CONTEXT_REFUSAL) and, on SIGTERM, stops accepting, finishes the requests in flight and exits,
unlinking its socket path. `probe()` relies on the first: it sends a request no helper ever
runs (it carries no descriptors) and reads why it was refused. The listener's pid is the
socket's SO_PEERCRED (the process that called listen()); `Listener.stoppable()` accepts only a
process that is a cnmd by its command line and holds that listening socket, so a socket
systemd holds (cnmd.socket: pid 1) is never taken over: its service is restarted through
systemd instead. `stop()` signals through a pidfd, so a pid reused after the check is never hit.

Which listener a new cnmd may replace (its rules, cli/cnmd.py helper_to_replace) needs two
facts beyond the probe: the build an install has switched to (`installed_build`: a helper of
that build is replaced only by one of that build), and whether a process runs in the node's
namespaces (`outside_node_namespaces`).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct

from . import thin

PROBE_FLAG = b"probe"  # a helper that knows it answers at once, without logging a refusal
CONTEXT_REFUSAL = "the caller's context is not the helper's"  # a helper's answer to a caller unlike itself
BUILD_ID_FILE = "_internal/cnm-build-id"  # in a bundle directory, beside its executable
ANSWER_TIMEOUT = 5.0  # a refusal is immediate unless every worker is busy
_OTHER_BUILD = " != helper build "
# Refusals that mean the helper's code is not the code of its build id: a checkout's helper
# whose tree changed since it started (cli/cnmd.py SourceWatch).
_STALE_CODE = ("since the helper started", "cannot watch ")


class Listener:
    """What answered on a helper socket."""

    def __init__(self, path: str, pid: int, reason: str | None):
        self.path = path
        self.pid = pid  # 0 when the listener is in a pid namespace we cannot see
        self.reason = reason  # its refusal of our probe; None: no answer in time
        self.build: str | None = None  # the helper's build, when its refusal names it
        self.other_build = False
        if reason is None:
            return
        if reason.startswith("build ") and _OTHER_BUILD in reason:
            self.other_build = True
            self.build = reason.split(_OTHER_BUILD, 1)[1]
        elif reason.startswith("protocol "):  # "protocol N, helper speaks M"
            self.other_build = True
            self.build = f"protocol {reason.rsplit(' ', 1)[-1]}"
        elif any(mark in reason for mark in _STALE_CODE):
            self.other_build = True
            self.build = "its own tree, changed since it started"

    @property
    def answered(self) -> bool:
        return self.reason is not None

    @property
    def refuses_context(self) -> bool:
        """It refuses callers like the prober: another mount, user or pid namespace, root,
        credentials or confinement (it never says which, nor its build)."""
        return self.reason == CONTEXT_REFUSAL

    def build_tail(self) -> str | None:
        """The listener's build id as its bundle names it (the id file's text), from its
        refusal or, when that does not say, from the bundle its executable runs from."""
        if self.build and "/" in self.build:
            return self.build.rsplit("/", 1)[1]
        exe = executable(self.pid)
        return bundle_build(exe, f"/proc/{self.pid}/root") if exe else None

    def argv(self) -> list[str]:
        return process_argv(self.pid) if self.pid > 0 else []

    def describe(self) -> str:
        cmd = " ".join(self.argv()) or "?"
        return f"pid {self.pid} ({cmd})"

    def stoppable(self) -> str | None:
        """Why this listener must not be signalled, or None when it is a cnmd we may stop."""
        if self.pid <= 1 or self.pid == os.getpid():
            return f"its listener is pid {self.pid} (systemd's socket unit, or not visible from here)"
        if not is_helper_argv(self.argv()):
            return f"its listener {self.describe()} is not a cnmd"
        if not holds_listening_socket(self.pid, self.path):
            return f"pid {self.pid} does not hold the listening socket {self.path}"
        return None


def probe(path: str, build_id: str | None = None, timeout: float = ANSWER_TIMEOUT) -> Listener | None:
    """The listener on `path`, or None when nothing listens there (no file, or a stale one)."""
    build_id = build_id or thin.build_id()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(thin.CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        fields = [build_id.encode(), b"", b"", b"", PROBE_FLAG]
        request = [thin.MAGIC, struct.pack("!II", thin.PROTOCOL, len(fields))]
        for field in fields:
            request += [struct.pack("!I", len(field)), field]
        sock.settimeout(timeout)
        try:
            sock.sendall(b"".join(request))
            tag = thin.recv_exact(sock, 2)
            if tag != b"NO":
                return Listener(path, pid, f"unexpected answer {tag!r}")
            (length,) = struct.unpack("!I", thin.recv_exact(sock, 4))
            return Listener(path, pid, thin.recv_exact(sock, length).decode(errors="replace"))
        except (OSError, EOFError):
            return Listener(path, pid, None)
    finally:
        sock.close()


def process_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [os.fsdecode(a) for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_helper_argv(argv: list[str]) -> bool:
    """A cnmd by its command line: `cnmd ...`, `python3 -IS .../cnmd ...` (a checkout), or
    `cnmctl ... daemon ...`."""
    for i, arg in enumerate(argv[:3]):
        name = os.path.basename(arg)
        if name == "cnmd":
            return True
        if name == "cnmctl":
            return "daemon" in argv[i + 1:]
    return False


def listening_inodes(path: str) -> set[int]:
    """Inodes of the listening unix sockets bound to `path` (this network namespace's view)."""
    found = set()
    try:
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening
                if len(parts) >= 8 and parts[7] == path and int(parts[3], 16) & 0x10000:
                    found.add(int(parts[6]))
    except (OSError, ValueError):
        pass
    return found


def holds_listening_socket(pid: int, path: str) -> bool:
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(path)}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except OSError:
            continue
    return False


def stop(listener: Listener) -> int | None:
    """SIGTERM to a stoppable listener: it drains and exits. A pidfd to wait on, or None when
    it is already gone. The checks run after the pidfd is open: the pid cannot be reused."""
    try:
        pidfd = os.pidfd_open(listener.pid)
    except ProcessLookupError:
        return None
    why = listener.stoppable()
    if why is not None:
        os.close(pidfd)
        raise PermissionError(why)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
    except ProcessLookupError:
        os.close(pidfd)
        return None
    return pidfd


def wait_exit(pidfd: int, timeout: float | None = None) -> bool:
    """Until the process of `pidfd` has exited (True), or `timeout` seconds (False)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


# ---- installs and the node --------------------------------------------------------------------
def executable(pid: int) -> str | None:
    """The path process `pid` runs (in its own mount namespace), None if gone or deleted."""
    if pid <= 0:
        return None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return None if exe.endswith(" (deleted)") else exe


def bundle_build(exe: str, root: str = "") -> str | None:
    """The build id of the bundle `exe` runs from (its id file), seen through `root`."""
    try:
        with open(f"{root}{os.path.dirname(exe)}/{BUILD_ID_FILE}") as f:
            return f.read().strip() or None
    except OSError:
        return None


def installed_build(exe: str, root: str = "") -> str | None:
    """When `exe` runs from a bundle an install put in place (PREFIX/.cnm-cni/<bundle>/), the
    build that install runs now: the one PREFIX/.cnm-cni/current names. Else None."""
    versions = os.path.dirname(os.path.dirname(exe))
    if os.path.basename(versions) != ".cnm-cni":
        return None
    try:
        current = os.readlink(f"{root}{versions}/current")
    except OSError:
        return None
    return bundle_build(f"{versions}/{current}/cnm", root)


def outside_node_namespaces(pid: int | None = None) -> str | None:
    """Why process `pid` (default: this one) is not in the node's namespaces (the mount, user
    and pid namespaces and root of pid 1, where the init system starts the runtime), or None.
    Also None when pid 1 cannot be read (a container whose init hides it): the process then
    stands for the node."""
    from . import peer

    try:
        node, _ = peer.context_of(1)
    except OSError:
        return None
    try:
        own, _ = peer.context_of(os.getpid() if pid is None else pid)
    except OSError as exc:
        return f"its context cannot be read: {exc}"
    differs = [key for key in (*peer.NAMESPACES, "root") if own.get(key) != node.get(key)]
    return f"its {', '.join(differs)} differ from pid 1's" if differs else None
