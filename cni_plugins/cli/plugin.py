"""The multi-call plugin executable: dispatch on the name it was run as.

Imports only the stdlib and the protocol layer; drivers, pyroute2 and pydantic
are loaded after VERSION and input validation, when a command needs them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from .. import __version__
from ..cni import versions
from ..cni.dispatch import Plugin, Response, dispatch
from ..cni.request import MAX_STDIN
from ..drivers import PLUGIN_TYPES

# plugin type -> how to build it (module, attribute, argument)
PLUGINS = {plugin_type: ("cni_plugins.controller", "Controller", driver) for plugin_type, driver in PLUGIN_TYPES.items()}
PLUGINS["cnm-ipam"] = ("cni_plugins.ipam.plugin", "IpamPlugin", None)


def plugin_name(argv0: str, stdin: bytes = b"") -> str:
    """The plugin type this process serves: the name it was executed as."""
    return os.path.basename(argv0)


def loader(name: str):
    def load() -> Plugin:
        import importlib

        if name not in PLUGINS:
            from ..cni.errors import INVALID_CONFIG, CNIError

            raise CNIError(INVALID_CONFIG, f"unknown plugin type {name!r}", f"this executable serves {sorted(PLUGINS)}")
        module, attr, arg = PLUGINS[name]
        factory = getattr(importlib.import_module(module), attr)
        return factory(arg) if arg is not None else factory()

    return load


def handle(name: str, env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None) -> Response:
    """The whole CNI behaviour of plugin `name` for one invocation (no global state), logged
    (cni.log) here so the in-process and the resident-helper paths log alike."""
    return dispatch(loader(name), env, stdin, netns_fd, plugin_name=name)


def read_stdin() -> bytes:
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return b""
        return sys.stdin.buffer.read(MAX_STDIN + 1)
    except (OSError, ValueError):
        return b""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    name = plugin_name(argv[0])
    if not os.environ.get("CNI_COMMAND"):  # unset or empty, as Go's skel (R5)
        sys.stderr.write(
            f"{name} (cnm-cni {__version__}): CNI plugin over the Container Network Model\n"
            f"CNI protocol versions supported: {', '.join(versions.SUPPORTED)}\n"
        )
        return 0
    # The thin path: the resident helper (cnmd) when one serves us, else handle() in-process.
    from .thin import run

    return run(name, os.environ)
