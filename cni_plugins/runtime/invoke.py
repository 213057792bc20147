"""Executing one plugin as libcni's invoke package does.

The plugin inherits our environment plus the six CNI_* variables (always set, maybe
empty), gets the config on stdin, and answers on stdout: a result, or an error object.
When stdout is empty on failure the stderr text becomes the message. Plugin stderr is
also passed on to ours, as a runtime's log would get it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Mapping, Sequence

from ..cni.errors import PLUGIN_FAILURE, CNIError
from .errors import PluginError, RunnerError

TEXT_BUSY_RETRIES = 5  # libcni retries "text file busy" up to 6 attempts, 1 s apart
ETXTBSY = 26


@dataclass(frozen=True)
class Invocation:
    """The CNI_* environment of one exec."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Sequence[tuple[str, str]] = ()
    path: Sequence[str] = ()

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        env = dict(base)
        env.update(
            CNI_COMMAND=self.command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_ARGS=join_args(self.args),
            CNI_IFNAME=self.ifname,
            CNI_PATH=os.pathsep.join(self.path),
        )
        return env


def join_args(args: Sequence[tuple[str, str]]) -> str:
    """CNI_ARGS as libcni builds it: K=V pairs joined by ';', no escaping."""
    return ";".join(f"{k}={v}" for k, v in args)


def find_plugin(plugin_type: str, paths: Sequence[str]) -> str:
    """The first regular file named `plugin_type` in the CNI_PATH directories."""
    if not paths:
        raise RunnerError("no paths provided")
    if not plugin_type or os.sep in plugin_type:
        raise RunnerError(f"invalid plugin name: {plugin_type!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        try:
            if stat.S_ISREG(os.stat(candidate).st_mode):
                return candidate
        except OSError:
            continue
    raise RunnerError(f'failed to find plugin "{plugin_type}" in path [{" ".join(paths)}]')


def plugin_error(stdout: bytes, stderr: bytes, rc: int) -> CNIError:
    """libcni's pluginErr: the error object on stdout, else stderr's text."""
    if not stdout.strip():
        if stderr.strip():
            return CNIError(PLUGIN_FAILURE, f"netplugin failed: {stderr.decode(errors='replace').strip()!r}")
        return CNIError(PLUGIN_FAILURE, f"netplugin failed with no error message: exit status {rc}")
    try:
        doc = json.loads(stdout)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        return CNIError(
            PLUGIN_FAILURE,
            f"netplugin failed but error parsing its diagnostic message {stdout.decode(errors='replace')!r}: {exc}",
        )
    try:
        code = int(doc.get("code") or 0)
    except (TypeError, ValueError):
        code = PLUGIN_FAILURE
    return CNIError(code, str(doc.get("msg", "")), str(doc.get("details", "") or ""))


def exec_plugin(
    plugin_path: str,
    stdin: bytes,
    invocation: Invocation,
    *,
    base_env: Mapping[str, str] | None = None,
    stderr: IO[str] | None = None,
    timeout: float | None = None,
    wrapper: Sequence[str] = (),
) -> bytes:
    """Run the plugin; its stdout on success, PluginError otherwise.

    `wrapper` prefixes the command line (e.g. nsenter --net=... --) to run the plugin
    in another network namespace, as a runtime living there would.
    """
    env = invocation.env(os.environ if base_env is None else base_env)
    for attempt in range(TEXT_BUSY_RETRIES + 1):
        try:
            proc = subprocess.run(
                [*wrapper, plugin_path], input=stdin, env=env, capture_output=True, timeout=timeout, check=False
            )
            break
        except OSError as exc:
            if exc.errno == ETXTBSY and attempt < TEXT_BUSY_RETRIES:
                time.sleep(1)  # the binary is being replaced right now
                continue
            raise PluginError(CNIError(PLUGIN_FAILURE, f"cannot execute {plugin_path}: {exc.strerror}")) from None
        except subprocess.TimeoutExpired:
            raise PluginError(CNIError(PLUGIN_FAILURE, f"{plugin_path} timed out after {timeout} s")) from None
    if proc.stderr:
        out = sys.stderr if stderr is None else stderr
        out.write(proc.stderr.decode(errors="replace"))
        out.flush()
    if proc.returncode != 0:
        raise PluginError(plugin_error(proc.stdout, proc.stderr, proc.returncode))
    return proc.stdout
