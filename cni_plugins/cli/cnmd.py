"""cnmd: the warm resident helper behind the thin path (cli/thin.py).

It keeps the heavy modules (pyroute2, pydantic, the drivers) imported and runs
each request as `cli.plugin.handle(name, env, stdin, netns_fd=fd)` in a worker
thread of a small pool, so requests run concurrently with the locking of
separate processes: store transactions and flocks are per call, setns is per
thread. A worker serves one request at a time, as a fresh thread would: it has
its own filesystem context (unshared once; the caller's cwd and umask are
taken per request), adopts the caller's netns per request and is put back in
the helper's own netns after every request, checked; a worker that cannot be
put back ends instead of serving again (see Helper._work).

It serves only callers whose context equals its own (mount, user and pid
namespaces, root directory, credentials, capabilities and confinement: see
cli/peer.py), read from the kernel through the connection (SO_PEERCRED and a
pidfd), never taken from the request; and only requests of its own build. Anyone
else is refused (told no more than that) and runs the command in-process, which
is by construction the exact in-process result. It never resolves a caller's
path: CNI_NETNS arrives as an open descriptor, and the working directory and
netns handed over must be the caller's own.

Started by `cnmctl daemon` (which calls `serve()`), by the systemd socket unit
in conf/systemd/, or directly: `cnmd [--socket PATH]`. A helper on the path that is of no use
to the node (another build: an upgrade's leftover; or one that refuses the node's callers) is
replaced: see helper_to_replace and Takeover. On SIGTERM it stops
accepting, finishes the requests in flight and exits.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time

from . import handover, peer, thin

CLONE_FS = 0x00000200
MAX_FIELD = thin.MAX_STDIN + 1
MAX_FIELDS = 16
REQUEST_TIMEOUT = 10.0  # a client sends its whole request at once; a stalled peer is dropped
MAX_WORKERS = 256  # requests in flight; beyond this, callers wait, time out, claim and run in-process
KEEP_IDLE = 4  # idle workers kept warm for the next requests; more than this end when idle for
IDLE_TIMEOUT = 30.0  # seconds
LISTEN_FDS_START = 3
# Imported at start so the first request is as warm as the next (missing ones are skipped).
PRELOAD = (
    "cni_plugins.cni.result",
    "cni_plugins.controller",
    "cni_plugins.drivers.null",
    "cni_plugins.drivers.host",
    "cni_plugins.drivers.bridge",
    "cni_plugins.drivers.container",
    "cni_plugins.drivers.macvlan",
    "cni_plugins.ipam.plugin",
    "cni_plugins.ipam.disk",
    "cni_plugins.linux.links",
    "pyroute2.iproute.linux",  # IPRoute: Rtnl.iproute, the requests linux/rtnl.py has no method for
    "pyroute2.conntrack",  # the UDP ports' conntrack flush (linux/conntrack.py imports it on use)
    "pydantic",
)

_libc = ctypes.CDLL(None, use_errno=True)
M_ARENA_MAX = -8  # glibc mallopt(3)


# ---- native memory -------------------------------------------------------------------------
# Requests run in worker threads that come and go with the load, and glibc gives a thread that
# starts while another still holds an arena (concurrent requests) an arena of its own, up to
# 8 per core. A request frees what its native code (libnftables, sqlite, netlink buffers) took,
# but every arena keeps its freed pages resident: the helper's RSS rose in steps, an arena's
# working set (2-5 MB) at a time, over thousands of requests (+6 MB over 10,000 ADD/DEL pairs),
# while the Python objects (gc.get_objects()) and malloc's in-use bytes stayed flat: only
# memory that malloc held free grew. One arena, trimmed when the helper goes idle, keeps it flat.
def limit_malloc_arenas() -> bool:
    """One malloc arena for the whole helper: call before any thread starts. The requests run
    Python under the GIL, so they never contended for separate arenas anyway."""
    try:
        return _libc.mallopt(M_ARENA_MAX, 1) == 1
    except AttributeError:  # not glibc: no per-thread arenas to limit
        return False


def release_free_memory() -> None:
    """Give the pages malloc holds free back to the kernel (glibc malloc_trim(3), ~0.15 ms)."""
    try:
        _libc.malloc_trim(0)
    except AttributeError:
        pass


# ---- Python's cyclic garbage collector -----------------------------------------------------
# Measured in a helper ADD: a young-generation collection ran about once per request (~0.2 ms:
# pyroute2's messages and pydantic's models make many small containers), a middle one every
# ~8 requests (~1.3 ms), and a full one (~23 ms) every ~100, each on some caller's critical
# path. The modules' own objects (most of the heap once preloaded) are frozen out of every
# collection, automatic collections run rarely, and the helper collects the young generations
# itself once it is idle, after the answer has gone out.
GC_THRESHOLDS = (20000, 20, 20)  # a safety net under sustained load; idle collections do the work
IDLE_COLLECT_AT = 5000  # young objects before an idle collection (~2-3 requests' worth): back-to-back
# execs start while the helper works after an answer, and on 2 CPUs that work delays them


def tune_gc() -> None:
    """After preload: freeze what is alive (imported modules, caches) and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def collect_when_idle() -> bool:
    """The garbage of the requests just answered, once there is enough of it (young generations
    only: cheap, bounded). True when it collected."""
    if gc.get_count()[0] < IDLE_COLLECT_AT:
        return False
    gc.collect(1)
    return True


def log(msg: str) -> None:
    sys.stderr.write(f"cnmd[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


# ---- listening socket ----------------------------------------------------------------------
def systemd_socket() -> socket.socket | None:
    """The socket handed over by systemd socket activation (LISTEN_FDS), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=LISTEN_FDS_START)


def bind_socket(path: str, at: str | None = None) -> socket.socket:
    """A root-only listening socket (socket 0600, missing directories made 0700; an existing
    directory keeps its mode: /run or /tmp are not ours to change) for `path`: bound there,
    where it refuses to steal a live one, or at `at`, a name beside it that Takeover renames
    over it; refuses a directory the plugins would not trust (thin.untrusted)."""
    from ..linux.fs import make_dirs

    directory = os.path.dirname(os.path.abspath(path))
    make_dirs(directory, 0o700)
    problem = thin.untrusted_directory(directory)
    if problem:
        raise SystemExit(f"cnmd: {problem}: the plugins would not use a socket there")
    if at is None and os.path.lexists(path):
        remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(at or path)
    finally:
        os.umask(old)
    os.chmod(at or path, 0o600)
    sock.listen(128)
    return sock


def remove_stale_socket(path: str) -> None:
    """Unlink `path` if it is a socket nobody listens on (a helper that is gone left it);
    SystemExit for anything else: a live socket, or a file that is no socket (never ours to
    remove)."""
    import stat

    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise SystemExit(f"cnmd: {path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(thin.CONNECT_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError as exc:
        raise SystemExit(f"cnmd: cannot tell whether a helper listens on {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise SystemExit(f"cnmd: another helper already listens on {path}")


# ---- a helper of another build on our socket -------------------------------------------------
def helper_to_replace(path: str, build_id: str) -> handover.Listener | None:
    """The helper listening on `path` that this one replaces; None when nothing listens there.
    SystemExit when a helper that must be kept listens. Replaced: a helper that refuses this
    cnmd's callers, when that is of no use to the node - it is of another build, or of any
    build but refuses callers of the node's own context (a helper started in another mount
    namespace) - and it is a cnmd this process may stop. Kept: one that serves this cnmd's
    callers (same build), does not answer, or is not a cnmd (systemd's socket); one of the
    build its install has switched to, unless this cnmd is of that build too (a stale
    supervisor or an old image never takes the socket from the installed build); and any,
    when this cnmd is not in the node's namespaces (it would take the socket from the runtime's
    helper)."""
    if not os.path.lexists(path):
        return None
    try:
        listener = handover.probe(path, build_id)
    except OSError as exc:
        raise SystemExit(f"cnmd: another helper already listens on {path} (busy: {exc})") from None
    if listener is None:
        return None  # a stale socket file: bind_socket replaces it
    if not listener.answered:
        raise SystemExit(f"cnmd: another helper already listens on {path} ({listener.describe()}) "
                         f"and did not answer; not replacing it")
    if listener.refuses_context:
        outside = handover.outside_node_namespaces()
        if outside is not None:
            raise SystemExit(f"cnmd: the helper {listener.describe()} on {path} refuses callers like this cnmd, "
                             f"but this cnmd is not in the node's namespaces ({outside}); not replacing it")
        what = "refuses callers of this cnmd's context"
    elif listener.other_build:
        what = f"runs another build ({listener.build})"
    else:
        raise SystemExit(f"cnmd: another helper already listens on {path} ({listener.describe()}, "
                         f"same build)")
    why = listener.stoppable()
    if why is not None:
        raise SystemExit(f"cnmd: the helper on {path} {what}, but {why}: "
                         f"restart that helper instead (systemctl restart cnmd.service for the systemd unit)")
    theirs = listener.build_tail()
    ours = build_id.rsplit("/", 1)[1]
    exe = handover.executable(listener.pid)
    installed = {handover.installed_build(exe, f"/proc/{listener.pid}/root") if exe else None,
                 handover.installed_build(os.path.realpath("/proc/self/exe"))} - {None}
    if theirs in installed and ours not in installed:
        raise SystemExit(f"cnmd: the helper {listener.describe()} on {path} runs build {theirs}, the build its "
                         f"install runs; this cnmd is build {ours}: not replacing it (start the installed "
                         f"cnmd, PREFIX/cnm-cni/cnmd, or install this build first)")
    return listener


class Takeover:
    """This helper takes `path` from a helper it replaces (helper_to_replace), which then
    drains and exits.

    Our socket is bound beside the path and renamed over it (rename(2)): a caller connects to
    the old helper or to us, never to nothing. Told by SIGTERM, the old helper finishes what it
    claimed and exits; every cnmd so far then unlinks the path, whatever socket it names by
    then, so a spare hard link of ours puts the name back (callers in between run in-process).
    Two cnmds replacing one helper at once both rename; the path names one of them, and the
    other (`lost`) stops: its socket is unreachable.
    """

    def __init__(self, path: str, previous: handover.Listener):
        self.path = path
        self.previous = previous
        head, base = os.path.split(os.path.abspath(path))
        self.temp = self.temp_name(path)
        self.spare = os.path.join(head, f".{base}.{os.getpid()}.spare")
        self.bound: os.stat_result | None = None  # our socket's file, taken before it is renamed
        self.lost = False

    @staticmethod
    def temp_name(path: str) -> str:
        head, base = os.path.split(os.path.abspath(path))
        return os.path.join(head, f".{base}.{os.getpid()}.new")

    def claim(self) -> None:
        """Our socket (bound at temp_name) takes the path."""
        try:
            self.bound = os.lstat(self.temp)
            os.link(self.temp, self.spare)
            os.rename(self.temp, self.path)
        except OSError:
            for name in (self.temp, self.spare):
                try:
                    os.unlink(name)
                except OSError:
                    pass
            raise

    def names_ours(self) -> bool | None:
        """Does the path name our socket: True, False (another's), None (nothing)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) == (self.bound.st_dev, self.bound.st_ino)

    def retire_previous(self, stop_serving=None) -> None:
        """Tell the old helper to drain and exit; once it has, make sure the path names our
        socket. If it names another's (a cnmd that replaced the same helper at the same time),
        this one has lost: `stop_serving()` is called."""
        old = self.previous
        log(f"replacing the helper {old.describe()} on {self.path} ({f'build {old.build}' if old.build else old.reason})")
        pidfd = None
        try:
            pidfd = handover.stop(old)
        except (PermissionError, OSError) as exc:
            log(f"cannot stop the helper pid {old.pid}: {exc}")
        if pidfd is not None:
            try:
                while not handover.wait_exit(pidfd, 1.0):
                    if self.names_ours() is False:  # renamed over: no one renames ours back
                        break
            finally:
                os.close(pidfd)
        if self.names_ours() is None:
            try:
                os.link(self.spare, self.path)
            except FileExistsError:
                pass
        try:
            os.unlink(self.spare)
        except OSError:
            pass
        if self.names_ours():
            log(f"the helper pid {old.pid} drained and exited; {self.path} is served by this helper")
            return
        self.lost = True
        log(f"{self.path} names another helper's socket (another cnmd replaced pid {old.pid} at the same "
            f"time): this one stops")
        if stop_serving is not None:
            stop_serving()


def remove_own_name(path: str, bound: os.stat_result | None) -> None:
    """Unlink `path` if it still names the socket this helper bound (a helper that replaced us
    may own it by now)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if bound is not None and (st.st_dev, st.st_ino) == (bound.st_dev, bound.st_ino):
        try:
            os.unlink(path)
        except OSError:
            pass


# ---- one request ---------------------------------------------------------------------------
class Refused(Exception):
    """The request is not served; str() is what the caller is told, `detail` (logged) why."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.detail = detail or reason


NOT_THE_HELPERS_CONTEXT = handover.CONTEXT_REFUSAL


class Probed(Refused):
    """handover.probe's request: same build, nothing to run (answered without a log line)."""


def unshare_fs() -> None:
    """Give this thread its own cwd and umask (the caller's are applied per request)."""
    if _libc.unshare(CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")


def adopt_netns(fd: int) -> None:
    """Run this worker thread in the caller's netns: there the plugin would have run.

    setns is per thread; the worker goes back to the helper's netns after the request
    (Helper.reset_thread), so nothing leaks to the next.
    """
    from ..linux import netns

    if netns.identity_of(fd) != netns.own_identity():
        try:
            netns.setns(fd)
        except OSError as exc:
            raise Refused(f"cannot enter the caller's netns: {exc}") from None


class _Reader:
    """The request's bytes, from as few recv calls as the peer allows: a client sends its whole
    request in one sendmsg, so one recvmsg usually holds all of it (descriptors included)."""

    CHUNK = 64 * 1024

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.buf = b""
        self.pos = 0
        self.fds: list[int] = []

    def first(self) -> None:
        data, anc, _flags, _addr = self.conn.recvmsg(self.CHUNK, socket.CMSG_SPACE(3 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self.fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        if not data:
            raise EOFError("connection closed")
        self.buf = data

    def take(self, n: int) -> bytes:
        have = len(self.buf) - self.pos
        if have >= n:
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            return out
        out = self.buf[self.pos:] + thin.recv_exact(self.conn, n - have)  # only this request's bytes
        self.buf, self.pos = b"", 0
        return out


def read_request(conn: socket.socket) -> tuple[list[bytes], list[int]]:
    reader = _Reader(conn)
    try:
        reader.first()
        head = reader.take(12)
        magic, proto, nfields = head[:4], *struct.unpack("!II", head[4:12])
        if magic != thin.MAGIC:
            raise Refused("not a cnmd request")
        if proto != thin.PROTOCOL:
            raise Refused(f"protocol {proto}, helper speaks {thin.PROTOCOL}")
        if nfields > MAX_FIELDS:
            raise Refused("too many fields")
        fields = []
        for _ in range(nfields):
            (length,) = struct.unpack("!I", reader.take(4))
            if length > MAX_FIELD:
                raise Refused("field too large")
            fields.append(reader.take(length))
        if reader.pos != len(reader.buf):
            raise Refused("bytes after the request")
    except BaseException:
        for fd in reader.fds:
            os.close(fd)
        raise
    return fields, reader.fds


def decode_env(blob: bytes) -> dict[str, str]:
    env = {}
    for item in blob.split(b"\0") if blob else ():
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class _Worker:
    """A pool thread's mailbox: the connection it is handed next (None: end)."""

    __slots__ = ("inbox", "thread")

    def __init__(self):
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None


class SourceWatch:
    """A checkout's package as this helper loaded it (the checkout's build id names only the
    tree): `changed()` says why it is no longer that code once any .py file, directory or the
    tree itself changed since the helper started, and from then on for good. Set up before the
    drivers are imported (preload runs after the Helper exists); __pycache__ is not watched.
    A tree that cannot be watched (not a local filesystem, no inotify) is never served."""

    def __init__(self, root: str):
        from ..linux import inotify

        self._inotify = inotify
        self._lock = threading.Lock()
        self._why: str | None = None
        self._watch = None
        self.root = root

        def fail(exc: OSError):
            raise exc

        try:  # every directory of the tree on one queue, the first one checked for a local filesystem
            for directory, subdirs, _files in os.walk(root, onerror=fail):
                subdirs[:] = [d for d in subdirs if d != "__pycache__"]
                fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    if self._watch is not None:
                        self._watch.add(fd)
                    elif inotify.filesystem_type(fd) in inotify.LOCAL_FILESYSTEMS:
                        self._watch = inotify.DirWatch(fd)
                    else:
                        self._why = f"cannot watch {root} for changes (not a local filesystem)"
                        return
                finally:
                    os.close(fd)
        except OSError as exc:
            self._why = f"cannot watch {root} for changes: {exc}"

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def changed(self) -> str | None:
        with self._lock:
            if self._why is None and self._watch is not None:
                for _wd, mask, name in self._watch.read():
                    if mask & self._inotify.LOST:
                        self._why = f"{self.root} was moved, removed or lost track of since the helper started"
                    elif name.endswith(".py") or (mask & self._inotify.IN_ISDIR and name != "__pycache__"):
                        self._why = f"{name} changed under {self.root} since the helper started"
            return self._why


class Unfit(Exception):
    """This worker thread cannot be made like a fresh one again: it must not serve again."""


class Helper:
    def __init__(self, sock: socket.socket, build_id: str | None = None):
        from ..linux import netns

        self.sock = sock
        self.build_id = build_id or thin.build_id()
        # A checkout's helper serves its tree only while the tree is the code it runs.
        self.sources = None if getattr(sys, "frozen", False) or build_id else SourceWatch(thin.package_dir())
        self.context, self.umask = peer.context_of(os.getpid())
        # Where a worker goes back to after each request: the helper's own netns (taken by the
        # thread that makes the Helper, before any request) and the root directory.
        self.home_fd = os.open(netns.SELF, os.O_RDONLY | os.O_CLOEXEC)
        self.home = netns.identity_of(self.home_fd)
        self.root_fd = os.open("/", thin.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.slots = threading.BoundedSemaphore(MAX_WORKERS)
        self.workers: set[threading.Thread] = set()
        self.idle: list[_Worker] = []  # a stack: the warmest worker serves next, the coldest end
        self.busy = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.served = 0

    def close(self) -> None:
        if self.sources is not None:
            self.sources.close()
        for fd in (self.home_fd, self.root_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def verify_caller(self, conn: socket.socket) -> int:
        """The umask of the process that connected, if its context (read from the kernel) is the
        helper's; else Refused, telling the caller no more than that."""
        try:
            context, umask = peer.caller_context(conn)
        except peer.Unverified as exc:
            raise Refused(NOT_THE_HELPERS_CONTEXT, str(exc)) from None
        differs = [key for key, value in self.context.items() if context.get(key) != value]
        if differs:
            raise Refused(NOT_THE_HELPERS_CONTEXT, f"the caller's {', '.join(differs)} differ from the helper's")
        return umask

    def check(self, fields: list[bytes], fds: list[int]) -> tuple[str, dict, bytes, int | None, int, int, int]:
        """The request of a caller whose context is the helper's: name, env, stdin, CNI_NETNS fd,
        cwd fd, the caller's netns fd, claim fd."""
        from ..linux import netns

        if len(fields) < 5:
            raise Refused("short request")
        build, name, env, stdin, flags = fields[:5]
        if build.decode(errors="replace") != self.build_id:
            raise Refused(f"build {build.decode(errors='replace')} != helper build {self.build_id}")
        changed = self.sources.changed() if self.sources is not None else None
        if changed:
            raise Refused(changed)
        if flags == handover.PROBE_FLAG:
            raise Probed(f"probe: helper build {self.build_id}")
        with_netns = flags == b"netns"
        if len(fds) != (4 if with_netns else 3):
            raise Refused("descriptors missing")
        cwd_fd, caller_net_fd, claim_fd = fds[0], fds[1], fds[2]
        if os.get_blocking(claim_fd):  # a blocking claim could hang this worker
            raise Refused("claim descriptor is blocking")
        netns_fd = fds[3] if with_netns else None
        # The thin path sends any namespace file (nsfs holds every kind): only a netns is served.
        if netns_fd is not None and not netns.is_netns_fd(netns_fd):
            raise Refused("CNI_NETNS is not a network namespace")  # the caller reports it in-process
        return name.decode(), decode_env(env), stdin, netns_fd, cwd_fd, caller_net_fd, claim_fd

    @staticmethod
    def check_own(conn: socket.socket, cwd_fd: int, caller_net_fd: int) -> None:
        """The working directory and netns handed over are the caller's own (a thread's of it:
        they are per thread), what an in-process run would have had, not any directory or
        namespace it holds a descriptor of."""
        pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        try:
            wanted = [(os.fstat(cwd_fd), "cwd"), (os.fstat(caller_net_fd), "ns/net")]
            threads = [str(pid)] + [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
        except OSError as exc:
            raise Refused(NOT_THE_HELPERS_CONTEXT, f"cannot check the caller's descriptors: {exc}") from None
        for thread in threads:
            try:
                if all(_same_file(got, os.stat(f"/proc/{pid}/task/{thread}/{name}")) for got, name in wanted):
                    return
            except OSError:
                continue
        raise Refused(NOT_THE_HELPERS_CONTEXT, "the working directory or netns sent is not the caller's")

    def serve_connection(self, conn: socket.socket) -> bytes | None:
        """One request, in this worker thread (its filesystem context already its own): the
        answer to send once the thread is reset (see _work), or None."""
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                fields, fds = read_request(conn)
                if peer_uid(conn) != 0:
                    raise Refused("caller is not root")
                umask = self.verify_caller(conn)
                name, env, stdin, netns_fd, cwd_fd, caller_net_fd, claim_fd = self.check(fields, fds)
                self.check_own(conn, cwd_fd, caller_net_fd)
                os.fchdir(cwd_fd)
                os.umask(umask)
                adopt_netns(caller_net_fd)
            except Refused as exc:
                if not isinstance(exc, Probed):
                    log(f"refused a request: {exc.detail}")
                return b"NO" + struct.pack("!I", len(str(exc).encode())) + str(exc).encode()
            if not thin.take_claim(claim_fd):
                return None  # the caller gave up waiting, took the command back and runs it itself
            from .plugin import handle

            response = handle(name, env, stdin, netns_fd=netns_fd)
            with self.lock:
                self.served += 1
            return b"RS" + struct.pack("!iI", response.exit_code, len(response.stdout)) + response.stdout
        except (OSError, EOFError, ValueError) as exc:
            log(f"connection dropped: {type(exc).__name__}: {exc}")
            return None
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def reset_thread(self) -> None:
        """Make this worker thread as a fresh one would start the next request: in the helper's
        own netns (verified), at the root directory (no caller's mount held busy), with the
        helper's umask. Unfit if it cannot be."""
        from ..linux import netns

        try:
            if netns.own_identity() != self.home:
                netns.setns(self.home_fd)
            if netns.own_identity() != self.home:
                raise Unfit("still in another netns after setns")
            os.fchdir(self.root_fd)
            os.umask(self.umask)
        except OSError as exc:
            raise Unfit(f"{type(exc).__name__}: {exc}") from None

    def _work(self, worker: _Worker) -> None:
        """A pool thread: serve the connections it is handed until it idles out, the helper
        stops, or it cannot be reset."""
        fit = True
        try:
            unshare_fs()  # its own cwd and umask, for as long as it lives
        except OSError as exc:
            log(f"worker cannot start: {exc}")
            fit = False
        conn = worker.inbox.get()
        while conn is not None:
            answer = None
            try:
                if fit:
                    answer = self.serve_connection(conn)
                    self.reset_thread()
            except Unfit as exc:
                log(f"worker ends: {exc}")
                fit = False
            except BaseException as exc:  # a bug in the helper: this thread is not trusted again
                log(f"worker ends: {type(exc).__name__}: {exc}")
                fit = False
                answer = None
            finally:
                # Back in the pool before the caller has its answer: its next request finds
                # this worker idle, not a reason to start another one.
                with self.lock:
                    self.busy -= 1
                    quiet = self.busy == 0
                    idle = fit and not self.stopping.is_set()
                    if idle:
                        self.idle.append(worker)
                self.slots.release()
                try:
                    if answer is not None:
                        conn.sendall(answer)
                except OSError as exc:
                    log(f"connection dropped: {type(exc).__name__}: {exc}")
                finally:
                    conn.close()  # without an answer: the caller runs the command itself or says so
            if quiet and collect_when_idle():  # the answer is sent: this costs the caller nothing
                release_free_memory()
            conn = self._next(worker) if idle else None
        with self.lock:
            self.workers.discard(threading.current_thread())

    def _next(self, worker: _Worker) -> socket.socket | None:
        """The worker's next connection; None once it has been idle for IDLE_TIMEOUT while
        more than KEEP_IDLE others idle, or the helper stops."""
        while True:
            try:
                return worker.inbox.get(timeout=IDLE_TIMEOUT)
            except queue.Empty:
                with self.lock:
                    if worker in self.idle and len(self.idle) > KEEP_IDLE:
                        self.idle.remove(worker)
                        return None
                # else a connection was just handed over (get returns it), or we are kept

    def dispatch(self, conn: socket.socket) -> None:
        """Hand an accepted connection to an idle worker, or to a new one."""
        self.slots.acquire()  # at most MAX_WORKERS requests in flight; the rest wait in the backlog
        with self.lock:
            self.busy += 1
            if self.idle:
                self.idle.pop().inbox.put(conn)  # under the lock: see _next
                return
            worker = _Worker()
            worker.inbox.put(conn)
            worker.thread = threading.Thread(target=self._work, args=(worker,), name="cnmd-worker")
            self.workers.add(worker.thread)
        try:
            worker.thread.start()
        except RuntimeError as exc:  # no thread to be had: the caller sees EOF and runs it itself
            log(f"cannot start a worker: {exc}")
            with self.lock:
                self.busy -= 1
                self.workers.discard(worker.thread)
            self.slots.release()
            conn.close()

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)  # wake up to notice stop()
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self.stopping.is_set():
                    break
                log(f"accept failed: {exc}")
                time.sleep(0.1)
                continue
            conn.setblocking(True)
            self.dispatch(conn)
        self.drain()

    def drain(self, timeout: float = thin.ANSWER_TIMEOUT) -> None:
        """Finish the requests in flight (a command the helper claimed is owed an answer) and end
        the idle workers."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for worker in self.idle:
                    worker.inbox.put(None)
                self.idle.clear()
                pending = list(self.workers)
            if not pending or time.monotonic() > deadline:
                return
            pending[0].join(max(0.0, min(0.5, deadline - time.monotonic())))

    def stop(self, *_args) -> None:
        self.stopping.set()


def preload() -> None:
    """Import the heavy modules and open one netlink socket, so requests find them warm."""
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    try:
        from ..linux import links

        with links.rtnl():
            pass
    except Exception:  # warming is best effort; a real request reports real errors
        pass
    tune_gc()


def start_firewall_watch(helper: Helper):
    """Our nftables tables put back within a second of a flush, in every namespace and store
    the helper serves (cli/nftwatch.py); from the start, the default store in the helper's
    own netns, if there is one (pods from before this helper started)."""
    from .. import node
    from ..cnm.store import state_dir
    from .nftwatch import FirewallWatch

    try:
        watch = FirewallWatch(helper.home, log)
        watch.start()
    except Exception as exc:  # noqa: BLE001 -- the helper serves without it
        log(f"no firewall watch: {type(exc).__name__}: {exc}")
        return None
    node.observe(watch.note)
    default = node.Node(state_dir(None, os.environ), os.environ)
    if os.path.exists(default.store.path):
        watch.note(default)
    return watch


def stop_firewall_watch(watch) -> None:
    from .. import node

    node.observe(None)
    if watch is not None:
        watch.stop()


def start_overlay_mesh(helper: Helper):
    """The lease and mesh of every cnm-overlay network this node is on (cli/overlaymesh.py)."""
    from ..cnm.store import state_dir
    from .overlaymesh import start

    return start(helper.home, log, state_dir(None, os.environ))


def start_name_service():
    """The name servers of DNS-enabled networks (drivers/dns/): those of the stores noted for
    this namespace at once, and each network an ADD through this helper names."""
    try:
        from ..drivers.dns import names
        from ..drivers.dns.service import NameService

        service = NameService(log, os.environ)
        service.start()
    except Exception as exc:  # noqa: BLE001 -- the helper serves without it
        log(f"no name service: {type(exc).__name__}: {exc}")
        return None
    names.on_commit(service.ensure)
    return service


def stop_name_service(service) -> None:
    if service is None:
        return
    from ..drivers.dns import names

    names.on_commit(None)
    service.stop()


def serve(socket_path: str | None = None, ready=None) -> int:
    """Run the helper until SIGTERM/SIGINT. The hook `cnmctl daemon` calls.

    `ready`, if given, is called with the socket path once the helper accepts requests.
    """
    limit_malloc_arenas()  # before the first thread (preload, workers) starts
    # Before the socket is bound: a restarted helper answers names before it takes a request.
    names = start_name_service()
    sock = systemd_socket()
    path = None
    takeover = None
    if sock is None:
        path = socket_path or os.environ.get(thin.SOCKET_ENV) or thin.DEFAULT_SOCKET
        if path in thin.DISABLED:
            raise SystemExit(f"cnmd: {thin.SOCKET_ENV}={path!r} disables the helper; give a socket path")
        previous = helper_to_replace(path, thin.build_id())
        if previous is not None:
            takeover = Takeover(path, previous)
        sock = bind_socket(path, at=takeover.temp if takeover else None)
    os.chdir("/")  # hold no mount busy; each request runs in its caller's cwd
    from ..cnm import store
    from ..ipam import disk

    store.keep_connections()  # many commands per process: no open + WAL checkpoint per command
    disk.keep_index()  # each lease directory's leases kept, exact by inotify: no scan per command
    helper = Helper(sock)
    watch = start_firewall_watch(helper)
    overlay = start_overlay_mesh(helper)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, helper.stop)
        signal.signal(signal.SIGINT, helper.stop)
    threading.Thread(target=preload, name="cnmd-preload", daemon=True).start()
    bound = None
    try:
        if takeover is not None:
            takeover.claim()
            bound = takeover.bound
        elif path is not None:
            bound = os.lstat(path)
        log(f"serving on {path or 'the systemd socket'} (build {helper.build_id})")
        if takeover is not None:
            threading.Thread(target=takeover.retire_previous, args=(helper.stop,), name="cnmd-takeover",
                             daemon=True).start()
        if ready is not None:
            ready(path)
        helper.serve_forever()
    finally:
        stop_firewall_watch(watch)
        if overlay is not None:
            overlay.stop()
        stop_name_service(names)
        helper.close()
        if path is not None:
            remove_own_name(path, bound)
        if takeover is not None:
            remove_own_name(takeover.spare, bound)
            remove_own_name(takeover.temp, bound)
        sock.close()
    log(f"stopped after {helper.served} requests")
    return 1 if takeover is not None and takeover.lost else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnmd", description="cnm-cni resident helper: serves the plugins' execs warm over a root-only unix socket")
    parser.add_argument("--socket", help=f"listening socket (default ${thin.SOCKET_ENV} or {thin.DEFAULT_SOCKET})")
    parser.add_argument("--print-build-id", action="store_true", help="print the build id and exit")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.print_build_id:
        print(thin.build_id())
        return 0
    if os.geteuid() != 0:
        sys.stderr.write("cnmd: must run as root\n")
        return 1
    return serve(args.socket)
