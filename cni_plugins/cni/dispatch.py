"""Command dispatch: a Request in, exactly one stdout document and an exit code out.

`dispatch()` is the whole CNI behaviour of a plugin executable, with no global
state, so the same function serves an exec'd process and a resident helper.
VERSION and every error are answered without importing pyroute2 or pydantic.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Mapping

from . import log, versions
from .errors import INTERNAL, TRY_AGAIN_LATER, CNIError
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


# Commands that only exist from a spec version on (R41, R45, R52).
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
        what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"
        if while_loading(exc):  # our files replaced under this process, or incomplete: a retry will do
            err = CNIError(TRY_AGAIN_LATER, "cnm-cni cannot load its code",
                           f"{what}: its files are being replaced or are incomplete (an install in progress?); retry")
            event.error = err
        else:
            import traceback

            err = CNIError(INTERNAL, "internal error", what)
            event.error, event.traceback = err, traceback.format_exc()  # the traceback: the log only
        return Response(err.to_json(error_version or version_hint(stdin)), 1)


def while_loading(exc: BaseException) -> bool:
    """The exception comes from loading a module: one missing (ImportError), or cut short (its
    traceback goes through the import system: SyntaxError, EOFError of a truncated .pyc, ...)."""
    if isinstance(exc, ImportError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        tb = tb.tb_next
    return False
