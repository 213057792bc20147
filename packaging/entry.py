"""The bundle's single entry point (PyInstaller): one multi-call executable.

Plugin types (cnm-bridge, cnm-host, cnm-none, cnm-container, cnm-ipam, loopback),
cnmd and cnmctl are links to it; cli.thin.main dispatches on the name.
"""
import posix
import sys


# ---- the answer when the code cannot be loaded (the same text in bin/cnm and packaging/entry.py)
def cannot_run(exc: BaseException) -> int | None:
    """What an exec answers when the modules it needs cannot be loaded: a CNI error on stdout,
    never a traceback; None: re-raise (cnmd's or cnmctl's own failure, or not a load failure
    outside a plugin command). Builtins only: anything else may be what is missing."""
    name = sys.argv[0].rpartition("/")[2] if sys.argv else "cnm"
    command = posix.environ.get(b"CNI_COMMAND", b"").decode(errors="replace")
    answer = load_failure(exc, command)
    if name in ("cnmd", "cnmctl") or not command:
        if answer is None:
            return None
        sys.stderr.write(f"{name}: cannot load cnm-cni ({answer[2]})\n")
        return 1
    thin = sys.modules.get("cni_plugins.cli.thin")
    stdin = getattr(thin, "request_stdin", None)
    if stdin is None:
        try:
            stdin = sys.stdin.buffer.read(16 * 1024 * 1024)
        except Exception:
            stdin = b""
    if answer is None:
        answer = 199, "internal error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    code, msg, details = answer
    out = (f'{{"cniVersion": "{_cni_version(stdin)}", "code": {code}, "msg": {_json_string(msg)}, '
           f'"details": {_json_string(details)}}}\n')
    sys.stdout.write(out)
    sys.stdout.flush()
    return 1


def load_failure(exc: BaseException, command: str) -> tuple[int, str, str] | None:
    """(code, msg, details) when `exc` comes from loading code (a module missing: ImportError;
    or cut short: its traceback goes through the import system), else None. The code says
    whether a retry can work (cni/dispatch.py load_failure answers the same):
    11  cnm-cni's own files missing or incomplete (replaced under this exec: an install in progress);
    5   its files exist but cannot be read (permissions, the disk): a retry will not help;
    104 something of the node's is missing or does not load (a checkout's dependency, the
        interpreter's module, a system library: wrong C library or architecture);
    50  any of these answering STATUS (the plugin cannot serve ADD)."""
    tb, last = exc.__traceback__, ""
    loading = isinstance(exc, ImportError)
    while tb is not None:
        where = tb.tb_frame.f_code.co_filename
        loading = loading or where.startswith("<frozen importlib")
        last = where if not where.startswith("<") else last
        tb = tb.tb_next
    if not loading:
        return None
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    text = str(exc)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        code, msg = 5, "cnm-cni cannot read its code"
        details = f"{what}: check its files' permissions and the disk (a retry will not help)"
    elif any(sign in text for sign in _INCOMPATIBLE) or not _our_code(exc, last):
        code, msg = 104, "cnm-cni cannot run on this node"
        details = (f"{what}: a module or library it needs is missing or does not load on this node "
                   f"(reinstall cnm-cni and its dependencies; a retry will not help)")
    else:
        code, msg = 11, "cnm-cni cannot load its code"
        details = f"{what}: its files are being replaced or are incomplete (an install in progress?); retry"
    return (50 if command == "STATUS" else code), msg, details


def _our_code(exc: BaseException, last_file: str) -> bool:
    """The code that failed to load is cnm-cni's own (what an install replaces): in a bundle
    every module is; in a checkout the package cni_plugins."""
    if getattr(sys, "frozen", False):
        return True
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if name:
        return name.partition(".")[0] == "cni_plugins"
    where = getattr(exc, "filename", None) if isinstance(exc, SyntaxError) else last_file
    return bool(where) and "/cni_plugins/" in where and "-packages/" not in where


_INCOMPATIBLE = ("wrong ELF class", "undefined symbol", "GLIBC_")  # a library built for another node


def _cni_version(stdin: bytes) -> str:
    """The config's cniVersion when it is one we speak (read without json: it may be missing)."""
    rest = stdin.partition(b'"cniVersion"')[2].lstrip()
    if rest.startswith(b":"):
        rest = rest[1:].lstrip()
        if rest.startswith(b'"'):
            value = rest[1:].partition(b'"')[0]
            if value in (b"0.1.0", b"0.2.0", b"0.3.0", b"0.3.1", b"0.4.0", b"1.0.0", b"1.1.0"):
                return value.decode()
    return "1.1.0"


def _json_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
# ---- end of the shared text


try:
    from cni_plugins.cli.thin import main

    code = main()
except (SystemExit, KeyboardInterrupt):
    raise
except BaseException as exc:
    code = cannot_run(exc)
    if code is None:
        raise
sys.exit(code)
