"""The bundle's single entry point (PyInstaller): one multi-call executable.

Plugin types (cnm-bridge, cnm-host, cnm-none, cnm-container, cnm-ipam, loopback),
cnmd and cnmctl are links to it; cli.thin.main dispatches on the name.
"""
import posix
import sys


# ---- the answer when the code cannot be loaded (the same text in bin/cnm and packaging/entry.py)
def cannot_run(exc: BaseException) -> int | None:
    """What an exec answers when the modules it needs cannot be loaded (its files replaced or
    incomplete: an install in progress, a module missing): a CNI error on stdout, code 11 (a
    retry will find whole files), never a traceback; None: re-raise (cnmd's or cnmctl's own
    failure). Builtins only: anything else may be what is missing."""
    name = sys.argv[0].rpartition("/")[2] if sys.argv else "cnm"
    loading = isinstance(exc, ImportError)
    tb = exc.__traceback__
    while tb is not None and not loading:  # a half-written module fails inside the import system
        loading = tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")
        tb = tb.tb_next
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if name in ("cnmd", "cnmctl") or not posix.environ.get(b"CNI_COMMAND"):
        if not loading:
            return None
        sys.stderr.write(f"{name}: cannot load cnm-cni ({what}); reinstall it if this persists\n")
        return 1
    thin = sys.modules.get("cni_plugins.cli.thin")
    stdin = getattr(thin, "request_stdin", None)
    if stdin is None:
        try:
            stdin = sys.stdin.buffer.read(16 * 1024 * 1024)
        except Exception:
            stdin = b""
    if loading:
        code, msg = 11, "cnm-cni cannot load its code"
        details = f"{what}: its files are being replaced or are incomplete (an install in progress?); retry"
    else:
        code, msg, details = 199, "internal error", what
    out = (f'{{"cniVersion": "{_cni_version(stdin)}", "code": {code}, "msg": {_json_string(msg)}, '
           f'"details": {_json_string(details)}}}\n')
    sys.stdout.write(out)
    sys.stdout.flush()
    return 1


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
