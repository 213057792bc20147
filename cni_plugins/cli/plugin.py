"""A plugin command in this process: the plugin type's code, loaded by dispatch() only
once the command needs it (cli/thin.py, the entry point, calls handle() when no helper
serves the command; cnmd calls it for every command).

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
from ..drivers import PLUGIN_TYPES

# plugin type -> how to build it (module, attribute, argument)
PLUGINS = {plugin_type: ("cni_plugins.controller", "Controller", driver) for plugin_type, driver in PLUGIN_TYPES.items()}
PLUGINS["cnm-ipam"] = ("cni_plugins.ipam.plugin", "IpamPlugin", None)


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


def about(argv0: str) -> int:
    """What an exec without CNI_COMMAND prints (as Go's skel): who it is, what it speaks."""
    sys.stderr.write(
        f"{os.path.basename(argv0)} (cnm-cni {__version__}): CNI plugin over the Container Network Model\n"
        f"CNI protocol versions supported: {', '.join(versions.SUPPORTED)}\n"
    )
    return 0
