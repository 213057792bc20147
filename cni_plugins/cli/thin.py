"""The thin path every plugin exec takes first: hand the command to the resident helper.

Stdlib only, and only modules built into the interpreter (`posix`, `_socket`):
this module runs before anything else on every exec. Not even `os`: with `-S`
nothing has imported it yet, and importing it (its _collections_abc, posixpath,
stat) was ~1 ms of a ~7 ms exec. Nor `struct` (+0.3 ms: integers frame themselves
with int.to_bytes), `fcntl` (+0.1 ms: the helper checks the namespace type) or
`__future__` (+0.2 ms; the annotations here are valid at run time). It opens CNI_NETNS itself, sends env,
stdin, the netns descriptor (SCM_RIGHTS) and descriptors of its working directory and
its own netns to `cnmd` over a root-only unix socket, and relays the answer. It sends
nothing about who it is: the helper reads that from the kernel (cli/peer.py) and serves
only a caller whose context is its own. Only to a socket of
root's, in directories nobody but root can change, with root listening (untrusted(),
peer_uid()): anyone else would get the host's netns. When the helper is absent,
untrusted (logged), refuses, or has not claimed the command in time, the command runs
in-process (cli.plugin.handle) exactly as without a helper.

Wire protocol (PROTOCOL 3), all integers big-endian:
  client -> helper  b"CNMD" u32 protocol u32 nfields, then nfields x (u32 len, bytes):
                    build id, plugin name, env (NUL-separated "K=V", fs-encoded), stdin,
                    flags ("netns" when a fourth fd is CNI_NETNS);
                    ancillary SCM_RIGHTS: [cwd fd, own netns fd, claim fd, CNI_NETNS fd?]
  helper -> client  b"NO" u32 len reason (refused: serve in-process)
                  | b"RS" u32 exit code u32 len stdout
The claim fd is a non-blocking eventfd holding 1: whoever reads it first owns the command.
The helper reads it just before it runs the command. A client with no answer after
READY_TIMEOUT (or whose connection failed) reads it too: if it gets it, the helper never
will, and the command runs in-process; if not, the helper has the command and the client
waits for its answer (or reports it lost). So a fallback can never run a command twice,
without a round trip per request to agree on that (protocol 1's OK/GO).
"""

import posix
import sys

import _socket

PROTOCOL = 3  # 3: no caller context in the request (the helper reads it from the kernel)
MAGIC = b"CNMD"
SOCKET_ENV = "CNM_HELPER_SOCKET"
DEFAULT_SOCKET = "/run/cnm/cnmd.sock"
DISABLED = ("", "off", "none")  # CNM_HELPER_SOCKET values that mean: always in-process
MAX_STDIN = 16 * 1024 * 1024  # same bound as cni.request.MAX_STDIN (a unit test keeps them equal)
CONNECT_TIMEOUT = 0.5  # a unix connect is immediate unless the helper's backlog is full
READY_TIMEOUT = 3.0  # no answer yet: claim the command back (helper overloaded or wedged) or keep waiting
ANSWER_TIMEOUT = 330.0  # once the helper has claimed it: store busy timeout (120 s) + delegated IPAM (300 s)
BUILD_ID_FILE = "cnm-build-id"  # written into a PyInstaller bundle by packaging/build.sh
FS_ENCODING = sys.getfilesystemencoding()
O_PATH = getattr(posix, "O_PATH", 0o10000000)


served_by_helper = False  # set by run(): this process only relayed the helper's answer
distrusted = ""  # set by via_helper(): why a socket at the helper's path was not used
request_stdin: bytes | None = None  # what run() read: the entry point's answer when a module cannot load


# ---- what os and os.path would give (see the module doc) ------------------------------------
def _exists(path: str) -> bool:
    try:
        posix.stat(path)
        return True
    except OSError:
        return False


def _dirname(path: str) -> str:
    head = path.rpartition("/")[0]
    return head.rstrip("/") or ("/" if path.startswith("/") else "")


def _fsencode(text: str) -> bytes:
    return text.encode(FS_ENCODING, "surrogateescape")  # as os.fsencode


def environ() -> dict[str, str]:
    """This process's environment as os.environ shows it (a copy). Once os is imported its
    environ is the authority (changed in-process, e.g. by restore_frozen_environment)."""
    os = sys.modules.get("os")
    if os is not None:
        return dict(os.environ)
    return {k.decode(FS_ENCODING, "surrogateescape"): v.decode(FS_ENCODING, "surrogateescape")
            for k, v in posix.environ.items()}


SELF_NET = "/proc/thread-self/ns/net" if _exists("/proc/thread-self/ns/net") else "/proc/self/ns/net"


class Committed(Exception):
    """The helper claimed the command but gave no answer: it may have run there."""


# ---- identity of this install and of this process -------------------------------------------
def package_dir() -> str:
    here = __file__ if __file__.startswith("/") else f"{posix.getcwd()}/{__file__}"
    return _dirname(_dirname(here))


def build_id() -> str:
    """What must match between client and helper: protocol, version, and the exact code.

    A bundle carries an id made at build time. A checkout names its source tree (device,
    inode, path): the helper serving that tree watches it and refuses every request once a
    source in it changed (cli/cnmd.py SourceWatch), so an edited tree never talks to an older
    helper, and an exec pays one stat, not a walk over every source (~0.6 ms).
    """
    from .. import __version__

    base = getattr(sys, "_MEIPASS", None)
    if base is not None:
        try:
            with open(f"{base}/{BUILD_ID_FILE}", "rb") as f:
                return f"{PROTOCOL}/{__version__}/{f.read().decode().strip()}"
        except OSError:
            return f"{PROTOCOL}/{__version__}/frozen-without-id"
    root = package_dir()
    st = posix.stat(root)
    return f"{PROTOCOL}/{__version__}/checkout:{st.st_dev}:{st.st_ino}:{root}"


def open_netns(path: str) -> int | None:
    """CNI_NETNS opened as the plugin would (linux.netns.open_netns); None if it cannot be.

    Only a namespace file (nsfs) goes to the helper, which refuses one that is not a network
    namespace (/proc/<pid>/ns/pid: checked there, fcntl is not loaded here); anything else
    (missing, a directory, a regular file) is answered in-process, with the in-process error.
    """
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = posix.fstat(fd)
        if st.st_dev == posix.stat("/proc/self/ns/net").st_dev and (st.st_mode & 0o170000) != 0o040000:
            return fd
    except OSError:
        pass
    posix.close(fd)
    return None


# ---- whom the descriptors go to -------------------------------------------------------------
# The request hands over the host's and the container's netns: only a root helper may get them.
S_IFMT, S_IFDIR, S_IFLNK, S_IFSOCK = 0o170000, 0o040000, 0o120000, 0o140000  # (no `stat` module here)
MAX_SYMLINKS = 40  # as the kernel's path walk


def _safe_directory(st) -> bool:
    """Root's and writable by root alone; or root's with the sticky bit (/tmp: tests put their
    sockets under pytest's tmp dirs). In a sticky directory nobody but root can rename or remove
    root's entries: a name another user takes first is their socket, which the owner and peer
    checks refuse."""
    if st.st_uid != 0 or (st.st_mode & S_IFMT) != S_IFDIR:
        return False
    return not st.st_mode & 0o022 or bool(st.st_mode & 0o1000)


class Untrusted(Exception):
    """A helper socket not to be trusted with descriptors; str() says why."""


def resolved_directory(directory: str) -> str:
    """`directory` with its symlinks resolved, each directory from / down to it checked by
    _safe_directory (a symlink's target too, from the start); raises Untrusted. A few lstats:
    no os, no os.path."""
    if not directory.startswith("/"):
        directory = f"{posix.getcwd()}/{directory}"
    if not _safe_directory(posix.stat("/")):
        raise Untrusted("/ is not root-only")
    parts = directory.split("/")
    current, hops = "", 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":  # `current` holds real directories only: dropping the last is exact
            current = current.rpartition("/")[0]
            continue
        candidate = f"{current}/{part}"
        st = posix.lstat(candidate)
        if (st.st_mode & S_IFMT) == S_IFLNK:
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Untrusted(f"too many symlinks in {directory}")
            target = posix.readlink(candidate)
            if target.startswith("/"):
                current = ""
            parts[:0] = target.split("/")
            continue
        if not _safe_directory(st):
            raise Untrusted(f"{candidate} is not a directory of root's that only root can write")
        current = candidate
    return current or "/"


def untrusted_directory(directory: str) -> str | None:
    """Why a socket in `directory` would not be trusted, or None."""
    try:
        resolved_directory(directory)
        return None
    except Untrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot check {directory}: {exc.strerror}"


def untrusted(path: str) -> str | None:
    """Why the helper socket at `path` is not to be trusted, or None: its directories as
    resolved_directory checks them, and the socket itself root's (not a symlink)."""
    head, _, name = path.rpartition("/")
    if not name:
        return f"{path} is not a socket"
    try:
        directory = resolved_directory(head or ("/" if path.startswith("/") else "."))
        st = posix.lstat(f"{directory.rstrip('/')}/{name}")
    except Untrusted as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"
    if (st.st_mode & S_IFMT) != S_IFSOCK or st.st_uid != 0:
        return f"{path} is not a socket of root's"
    return None


def peer_uid(sock) -> int:
    """The uid of the process that listens on the other end (SO_PEERCRED: pid, uid, gid)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


# ---- framing -------------------------------------------------------------------------------
def encode_env(env) -> bytes:
    return b"\0".join(_fsencode(k) + b"=" + _fsencode(v) for k, v in env.items())


def encode_request(name: str, env, stdin: bytes, with_netns: bool) -> bytes:
    fields = [
        build_id().encode(),
        name.encode(),
        encode_env(env),
        stdin,
        b"netns" if with_netns else b"",
    ]
    parts = [MAGIC, _u32(PROTOCOL), _u32(len(fields))]
    for field in fields:
        parts.append(_u32(len(field)))
        parts.append(field)
    return b"".join(parts)


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def recv_exact(sock, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def send_with_fds(sock, data: bytes, fds: list[int]) -> None:
    rights = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)  # struct.pack("Ni")
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)]
    sent = sock.sendmsg([data], anc)
    if sent < len(data):
        sock.sendall(data[sent:])


# ---- the client ----------------------------------------------------------------------------
def socket_path(env) -> str | None:
    if "CNM_FAULT" in env:  # a test's crash switch (cni_plugins/faults.py) must end this process, not the helper
        return None
    path = env.get(SOCKET_ENV, DEFAULT_SOCKET)
    return None if path in DISABLED else path


def new_claim() -> int:
    """The claim token of one request: an eventfd holding 1 (see the module doc)."""
    return posix.eventfd(1, posix.EFD_NONBLOCK | posix.EFD_CLOEXEC)


def take_claim(fd: int) -> bool:
    """Take the command: True if nobody took it before (then the helper never runs it)."""
    try:
        posix.eventfd_read(fd)
        return True
    except BlockingIOError:
        return False


def via_helper(name: str, env, stdin: bytes) -> tuple[bytes, int] | None:
    """The helper's (stdout, exit code), or None: then the caller runs the command in-process.

    Raises Committed when the helper claimed the command and then failed to answer.
    """
    global distrusted
    path = socket_path(env)
    if path is None or not _exists(path):
        return None
    distrusted = untrusted(path) or ""
    if distrusted:
        return None
    fds = []
    claim = -1
    netns = env.get("CNI_NETNS", "")
    try:
        if netns:
            # The helper never resolves a caller's path: without an open namespace, in-process.
            netns_fd = open_netns(netns)
            if netns_fd is None:
                return None
            fds.append(netns_fd)
        claim = new_claim()
        fds.insert(0, claim)
        fds.insert(0, posix.open(SELF_NET, posix.O_RDONLY | posix.O_CLOEXEC))
        fds.insert(0, posix.open(".", O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC))
        request = encode_request(name, env, stdin, bool(netns))
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        for fd in fds:
            posix.close(fd)
        return None
    try:
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(path)
            uid = peer_uid(sock)
            if uid != 0:  # nothing sent yet: the claim is still ours alone
                distrusted = f"{path} is served by uid {uid}, not root"
                return None
            sock.settimeout(READY_TIMEOUT)
            send_with_fds(sock, request, fds)
            for fd in fds:
                if fd != claim:
                    posix.close(fd)
            fds = [claim]
            tag = recv_exact(sock, 2)
        except (OSError, EOFError):  # not sent, refused without a word, silent for READY_TIMEOUT
            if take_claim(claim):
                return None  # ours: the helper will never run it
            tag = None  # the helper has it: wait for its answer
        try:
            if tag is None:
                sock.settimeout(ANSWER_TIMEOUT)
                tag = recv_exact(sock, 2)
            elif tag == b"NO" and take_claim(claim):
                return None  # refused (other install, other namespaces, ...): run it ourselves
            if tag != b"RS":
                raise Committed(f"unexpected answer {tag!r}")
            sock.settimeout(ANSWER_TIMEOUT)
            head = recv_exact(sock, 8)
            code, length = int.from_bytes(head[:4], "big", signed=True), int.from_bytes(head[4:], "big")
            return recv_exact(sock, length), code
        except (OSError, EOFError) as exc:
            raise Committed(f"{type(exc).__name__}: {exc}") from None
    finally:
        for fd in fds:
            posix.close(fd)
        sock.close()


def read_stdin() -> bytes:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return b""
        return sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError):
        return b""


def committed_failure(command: str, stdin: bytes, reason: str) -> tuple[bytes, int]:
    """The helper lost an ADD it had started: say so (code 11) instead of running it twice."""
    import json

    from ..cni import versions
    from ..cni.errors import TRY_AGAIN_LATER, CNIError

    version = versions.LATEST
    try:
        v = json.loads(stdin).get("cniVersion")
        if v in versions.SUPPORTED:
            version = v
    except Exception:
        pass
    err = CNIError(TRY_AGAIN_LATER, "cnmd did not finish the command", f"{command}: {reason}; retry")
    return err.to_json(version), 1


def run(name: str, environ) -> int:
    """One CNI plugin exec (CNI_COMMAND is set): helper first, else in-process."""
    global served_by_helper, request_stdin
    stdin = request_stdin = read_stdin()
    try:
        answer = via_helper(name, environ, stdin)
    except Committed as exc:
        # Only an ADD can be unsafe to repeat; every other command is idempotent.
        command = environ.get("CNI_COMMAND", "")
        answer = committed_failure(command, stdin, str(exc)) if command == "ADD" else None
    if answer is None:
        if distrusted:
            from ..cni.log import message

            message(environ, None, "error", f"helper socket not used, the command runs in-process: {distrusted}")
        from .plugin import handle

        response = handle(name, environ, stdin)
        answer = (response.stdout, response.exit_code)
    else:
        served_by_helper = True
    stdout, code = answer
    if stdout:
        sys.stdout.buffer.write(stdout)
        sys.stdout.flush()
    return code


def set_env(key: str, value: str | None) -> None:
    """Set (or, with None, remove) a variable of this process's environment as os.environ
    would, without importing os: os.environ wraps posix.environ once it is imported."""
    os = sys.modules.get("os")
    if os is not None:
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
        return
    name = _fsencode(key)
    if value is None:
        if posix.environ.pop(name, None) is not None:
            posix.unsetenv(name)
    else:
        posix.environ[name] = _fsencode(value)
        posix.putenv(name, posix.environ[name])


def restore_frozen_environment() -> None:
    """Undo what the PyInstaller bootloader adds to the environment (before any thread runs).

    Children (nft, a delegated IPAM) must not load our bundled libraries, and
    the env a plugin forwards must be the runtime's own. The bundle's bootstrap
    (packaging/bootstrap/) has not imported os, and this does not either.
    """
    if not getattr(sys, "frozen", False):
        return
    env = environ()
    set_env("LD_LIBRARY_PATH", env.get("LD_LIBRARY_PATH_ORIG"))
    for key in env:
        if key == "LD_LIBRARY_PATH_ORIG" or key.startswith("_PYI_"):
            set_env(key, None)


# Names of the multi-call executable that are not plugin types.
ENTRY_POINTS = {
    "cnmd": ("cni_plugins.cli.cnmd", "main"),
    "cnmctl": ("cni_plugins.cli.cnmctl", "main"),
}


def main(argv: list[str] | None = None) -> int:
    """The multi-call executable (bin/cnm and the bundle): plugin types, cnmd, cnmctl."""
    restore_frozen_environment()
    argv = sys.argv if argv is None else argv
    name = argv[0].rpartition("/")[2]
    if name in ENTRY_POINTS:
        import importlib

        module, attr = ENTRY_POINTS[name]
        return getattr(importlib.import_module(module), attr)() or 0
    env = environ()
    if not env.get("CNI_COMMAND"):  # unset or empty, as Go's skel: the about line
        from .plugin import about

        return about(argv[0])
    code = run(name, env)
    if served_by_helper:
        # Nothing of ours is left to flush or close but stdout (done): skip the interpreter's
        # teardown, ~1 ms of an exec that is otherwise ~7 ms.
        sys.stderr.flush()
        posix._exit(code)
    return code
