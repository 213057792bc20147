"""Command dispatch: a Request in, exactly one stdout document and an exit code out.

`dispatch()` is the whole CNI behaviour of a plugin executable, with no global
state, so the same function serves an exec'd process and a resident helper.
VERSION and every error are answered without importing pyroute2 or pydantic.
"""

from __future__ import annotations

import json
import sys
from collections import namedtuple
from collections.abc import Callable, Mapping

from . import log, versions
from .errors import CANNOT_RUN, INTERNAL, IO_FAILURE, NOT_AVAILABLE, TRY_AGAIN_LATER, CNIError
from .request import Request, parse, version_hint

# What one command answers. (No dataclass, nor typing.Protocol below: importing dataclasses
# and typing was ~14 ms of an in-process VERSION; see cni/request.py.)
Response = namedtuple("Response", "stdout exit_code")


class Plugin:
    """What a plugin type implements (by convention, not inheritance); each method raises
    CNIError on failure."""

    def add(self, request: Request) -> object: ...  # a cni.result.Result
    def delete(self, request: Request) -> None: ...
    def check(self, request: Request) -> None: ...
    def gc(self, request: Request) -> None: ...
    def status(self, request: Request) -> None: ...


# Commands that only exist from a spec version on.
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}


def version_info(asked: object) -> bytes:
    """The VERSION answer: echo the asked version when we speak it, else our newest."""
    version = asked if isinstance(asked, str) and asked in versions.SUPPORTED else versions.LATEST
    return json.dumps({"cniVersion": version, "supportedVersions": list(versions.SUPPORTED)}).encode() + b"\n"


def dispatch(load_plugin: Callable[[], Plugin], env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None,
             plugin_name: str = "") -> Response:
    """Serve one command and log it (cni.log: one line per command, VERSION excepted)."""
    event = log.Event(plugin_name, env, stdin)
    response = _serve(load_plugin, env, stdin, netns_fd, event)
    if event.request is None or event.request.command != "VERSION":
        event.write(response.stdout)
    return response


def _serve(load_plugin, env, stdin: bytes, netns_fd: int | None, event: log.Event) -> Response:
    error_version = None  # the request's version once parsed; before that, a hint from stdin
    try:
        request = parse(env, stdin, netns_fd)
        event.request = request
        error_version = request.version
        if request.command == "VERSION":
            return Response(version_info(request.config.get("cniVersion")), 0)
        floor = MIN_VERSION.get(request.command)
        if floor and not versions.at_least(request.version, floor):
            raise CNIError(
                1,
                f"config version does not allow {request.command}",
                f"config is {request.version!r}; {request.command} needs {floor} or later",
            )
        plugin = load_plugin()
        if request.command == "ADD":
            result = plugin.add(request)
            return Response(json.dumps(result.emit(request.version)).encode() + b"\n", 0)
        if request.command == "DEL":
            plugin.delete(request)
        elif request.command == "CHECK":
            plugin.check(request)
        elif request.command == "GC":
            plugin.gc(request)
        else:
            plugin.status(request)
        return Response(b"", 0)
    except CNIError as err:
        event.error = err
        return Response(err.to_json(error_version or version_hint(stdin)), 1)
    except Exception as exc:  # a bug must still answer with an error object, never a traceback
        answer = load_failure(exc, env.get("CNI_COMMAND", ""))
        if answer is not None:  # our files replaced under this process, incomplete, or the node's missing
            err = CNIError(*answer)
            event.error = err
        else:
            import traceback

            err = CNIError(INTERNAL, "internal error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
            event.error, event.traceback = err, traceback.format_exc()  # the traceback: the log only
        return Response(err.to_json(error_version or version_hint(stdin)), 1)


def load_failure(exc: BaseException, command: str) -> tuple[int, str, str] | None:
    """(code, msg, details) when `exc` comes from loading code, else None: the entry point's
    answer (bin/cnm `load_failure`, which says what each code means), for a module first
    imported once the command runs. A copy, not shared: the entry points (bin/cnm,
    packaging/entry.py) must answer when this package itself cannot load, so they import
    nothing of it, and the package cannot import them (scripts outside it)."""
    tb, last = exc.__traceback__, ""
    loading = isinstance(exc, ImportError)
    while tb is not None:  # a module cut short fails inside the import system (SyntaxError, EOFError, ...)
        where = tb.tb_frame.f_code.co_filename
        loading = loading or where.startswith("<frozen importlib")
        last = where if not where.startswith("<") else last
        tb = tb.tb_next
    if not loading:
        return None
    what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        code, msg = IO_FAILURE, "cnm-cni cannot read its code"
        details = f"{what}: check its files' permissions and the disk (a retry will not help)"
    elif any(sign in str(exc) for sign in INCOMPATIBLE_LIBRARY) or not our_code(exc, last):
        code, msg = CANNOT_RUN, "cnm-cni cannot run on this node"
        details = (f"{what}: a module or library it needs is missing or does not load on this node "
                   f"(reinstall cnm-cni and its dependencies; a retry will not help)")
    else:
        code, msg = TRY_AGAIN_LATER, "cnm-cni cannot load its code"
        details = f"{what}: its files are being replaced or are incomplete (an install in progress?); retry"
    return (NOT_AVAILABLE if command == "STATUS" else code), msg, details


INCOMPATIBLE_LIBRARY = ("wrong ELF class", "undefined symbol", "GLIBC_")  # built for another node


def our_code(exc: BaseException, last_file: str) -> bool:
    """The code that failed to load is cnm-cni's own (what an install replaces): in a bundle
    every module is; in a checkout the package cni_plugins."""
    if getattr(sys, "frozen", False):
        return True
    name = exc.name if isinstance(exc, ImportError) else None
    if name:
        return name.partition(".")[0] == "cni_plugins"
    where = exc.filename if isinstance(exc, SyntaxError) else last_file
    return bool(where) and "/cni_plugins/" in where and "-packages/" not in where
