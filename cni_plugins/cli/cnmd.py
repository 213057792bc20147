"""cnmd: the warm resident helper behind the thin path (cli/thin.py).

It keeps the heavy modules (pyroute2, pydantic, the drivers) imported and runs
each request as `cli.plugin.handle(name, env, stdin, netns_fd=fd)` in a thread
of its own, so requests run concurrently with the locking of separate
processes: store transactions and flocks are per call, setns is per thread
(linux.netns.entered restores it), and each worker thread unshares its
filesystem context (cwd, umask) and takes the caller's.

It serves only callers whose context equals its own (mount, network, user and
pid namespaces, root directory, effective capabilities), with the same build
id: anyone else is refused and runs the command in-process, which is by
construction the exact in-process result. It never resolves a caller's path:
CNI_NETNS arrives as an open descriptor.

Started by `cnmctl daemon` (which calls `serve()`), by the systemd socket unit
in conf/systemd/, or directly: `cnmd [--socket PATH]`.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import signal
import socket
import struct
import sys
import threading
import time

from . import thin

CLONE_FS = 0x00000200
MAX_FIELD = thin.MAX_STDIN + 1
MAX_FIELDS = 16
REQUEST_TIMEOUT = 10.0  # a client sends its whole request at once; a stalled peer is dropped
MAX_WORKERS = 256  # beyond this, callers wait, time out on OK and run in-process
LISTEN_FDS_START = 3
# Imported at start so the first request is as warm as the next (missing ones are skipped).
PRELOAD = (
    "cni_plugins.cni.result",
    "cni_plugins.controller",
    "cni_plugins.drivers.null",
    "cni_plugins.drivers.host",
    "cni_plugins.drivers.bridge",
    "cni_plugins.drivers.container",
    "cni_plugins.ipam.plugin",
    "cni_plugins.ipam.disk",
    "cni_plugins.linux.links",
    "pyroute2",
    "pydantic",
)

_libc = ctypes.CDLL(None, use_errno=True)
M_ARENA_MAX = -8  # glibc mallopt(3)


# ---- native memory -------------------------------------------------------------------------
# Each request runs in a new thread, and glibc gives a thread that starts while another still
# holds an arena (the previous worker exiting, concurrent requests) an arena of its own, up to
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


def log(msg: str) -> None:
    sys.stderr.write(f"cnmd[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


# ---- listening socket ----------------------------------------------------------------------
def systemd_socket() -> socket.socket | None:
    """The socket handed over by systemd socket activation (LISTEN_FDS), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=LISTEN_FDS_START)


def bind_socket(path: str) -> socket.socket:
    """A root-only listening socket (dir 0700, socket 0600); refuses to steal a live one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket of a helper that is gone
        else:
            raise SystemExit(f"cnmd: another helper already listens on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


# ---- one request ---------------------------------------------------------------------------
class Refused(Exception):
    pass


def unshare_fs() -> None:
    """Give this thread its own cwd and umask (the caller's are applied per request)."""
    if _libc.unshare(CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")


def adopt_netns(fd: int) -> None:
    """Run this worker thread in the caller's netns: there the plugin would have run.

    setns is per thread; the thread ends with the request, so nothing leaks to the next.
    """
    from ..linux import netns

    if netns.identity_of(fd) != netns.own_identity():
        try:
            netns.setns(fd)
        except OSError as exc:
            raise Refused(f"cannot enter the caller's netns: {exc}") from None


def read_request(conn: socket.socket) -> tuple[list[bytes], list[int]]:
    fds: list[int] = []
    head, anc, _flags, _addr = conn.recvmsg(12, socket.CMSG_SPACE(3 * 4))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    if len(head) < 12:
        head += thin.recv_exact(conn, 12 - len(head))
    magic, proto, nfields = head[:4], *struct.unpack("!II", head[4:12])
    if magic != thin.MAGIC:
        raise Refused("not a cnmd request")
    if proto != thin.PROTOCOL:
        raise Refused(f"protocol {proto}, helper speaks {thin.PROTOCOL}")
    if nfields > MAX_FIELDS:
        raise Refused("too many fields")
    fields = []
    for _ in range(nfields):
        (length,) = struct.unpack("!I", thin.recv_exact(conn, 4))
        if length > MAX_FIELD:
            raise Refused("field too large")
        fields.append(thin.recv_exact(conn, length))
    return fields, fds


def decode_env(blob: bytes) -> dict[str, str]:
    env = {}
    for item in blob.split(b"\0") if blob else ():
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class Helper:
    def __init__(self, sock: socket.socket, build_id: str | None = None):
        self.sock = sock
        self.build_id = build_id or thin.build_id()
        own = thin.process_context()
        own.pop("umask")
        self.context = own
        self.slots = threading.BoundedSemaphore(MAX_WORKERS)
        self.workers: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.served = 0

    # Everything that makes an in-process run differ must be equal, or we refuse.
    def check(self, fields: list[bytes], fds: list[int]) -> tuple[str, dict, bytes, int | None, int, int]:
        if len(fields) < 6:
            raise Refused("short request")
        build, name, context, env, stdin, flags = fields[:6]
        if build.decode(errors="replace") != self.build_id:
            raise Refused(f"build {build.decode(errors='replace')} != helper build {self.build_id}")
        ctx = dict(line.split("=", 1) for line in context.decode().splitlines() if "=" in line)
        for key, value in self.context.items():
            if ctx.get(key) != value:
                raise Refused(f"caller's {key} differs from the helper's")
        try:
            umask = int(ctx.get("umask", ""), 8)
        except ValueError:
            raise Refused("no umask") from None
        with_netns = flags == b"netns"
        if len(fds) != (3 if with_netns else 2):
            raise Refused("descriptors missing")
        cwd_fd, caller_net_fd = fds[0], fds[1]
        netns_fd = fds[2] if with_netns else None
        return name.decode(), decode_env(env), stdin, netns_fd, cwd_fd, caller_net_fd, umask

    def serve_connection(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                unshare_fs()
                fields, fds = read_request(conn)
                if peer_uid(conn) != 0:
                    raise Refused("caller is not root")
                name, env, stdin, netns_fd, cwd_fd, caller_net_fd, umask = self.check(fields, fds)
                os.fchdir(cwd_fd)
                os.umask(umask)
                adopt_netns(caller_net_fd)
            except Refused as exc:
                log(f"refused a request: {exc}")
                conn.sendall(b"NO" + struct.pack("!I", len(str(exc).encode())) + str(exc).encode())
                return
            conn.sendall(b"OK")
            if thin.recv_exact(conn, 2) != b"GO":
                return  # the caller gave up (timed out) and runs the command itself
            from .plugin import handle

            response = handle(name, env, stdin, netns_fd=netns_fd)
            conn.sendall(b"RS" + struct.pack("!iI", response.exit_code, len(response.stdout)) + response.stdout)
            with self.lock:
                self.served += 1
        except (OSError, EOFError, ValueError) as exc:
            log(f"connection dropped: {type(exc).__name__}: {exc}")
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()

    def _worker(self, conn: socket.socket) -> None:
        try:
            self.serve_connection(conn)
        finally:
            with self.lock:
                self.workers.discard(threading.current_thread())
                idle = not self.workers
            self.slots.release()
            if idle:  # the answer is sent: trimming costs the caller nothing
                release_free_memory()

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
            self.slots.acquire()
            worker = threading.Thread(target=self._worker, args=(conn,), name="cnmd-request")
            with self.lock:
                self.workers.add(worker)
            worker.start()
        self.drain()

    def drain(self, timeout: float = thin.ANSWER_TIMEOUT) -> None:
        """Finish the requests in flight: a caller that got OK is owed an answer."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                pending = list(self.workers)
            if not pending or time.monotonic() > deadline:
                return
            pending[0].join(max(0.0, deadline - time.monotonic()))

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


def serve(socket_path: str | None = None, ready=None) -> int:
    """Run the helper until SIGTERM/SIGINT. The hook `cnmctl daemon` calls.

    `ready`, if given, is called with the socket path once the helper accepts requests.
    """
    limit_malloc_arenas()  # before the first thread (preload, workers) starts
    sock = systemd_socket()
    path = None
    if sock is None:
        path = socket_path or os.environ.get(thin.SOCKET_ENV) or thin.DEFAULT_SOCKET
        if path in thin.DISABLED:
            raise SystemExit(f"cnmd: {thin.SOCKET_ENV}={path!r} disables the helper; give a socket path")
        sock = bind_socket(path)
    os.chdir("/")  # hold no mount busy; each request runs in its caller's cwd
    from ..cnm import store
    from ..ipam import disk

    store.keep_connections()  # many commands per process: no open + WAL checkpoint per command
    disk.keep_index()  # each lease directory's leases kept, exact by inotify: no scan per command
    helper = Helper(sock)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, helper.stop)
        signal.signal(signal.SIGINT, helper.stop)
    threading.Thread(target=preload, name="cnmd-preload", daemon=True).start()
    log(f"serving on {path or 'the systemd socket'} (build {helper.build_id})")
    if ready is not None:
        ready(path)
    try:
        helper.serve_forever()
    finally:
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        sock.close()
    log(f"stopped after {helper.served} requests")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnmd", description="cnm-cni resident helper (see cli/thin.py)")
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
