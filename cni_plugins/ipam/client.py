"""How a main plugin (the bridge driver) runs its IPAM: in-process for cnm-ipam,
else the IPAM binary found on CNI_PATH, executed with the identical stdin and
the plugin's own environment, only CNI_COMMAND overridden.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from typing import Mapping, Sequence

from ..cni.errors import INVALID_CONFIG, NOT_AVAILABLE, PLUGIN_FAILURE, CNIError
from ..cni.request import parse
from ..cni.result import Result
from ..cni.versions import SUPPORTED

IN_PROCESS = "cnm-ipam"
SPEC_WITH_STATUS = "1.1.0"  # STATUS and GC came with it
_VERSIONS_CACHE_MAX = 64
# (path, st_dev, st_ino, st_mtime_ns, st_size) of an IPAM binary -> the versions its VERSION
# lists. Kept for the process's life: the resident helper asks each binary once, and a
# replaced binary (another inode, size or mtime) is asked again.
_versions: dict[tuple, tuple[str, ...]] = {}


def find_plugin(ipam_type: str, cni_path: Sequence[str]) -> str:
    if not ipam_type or "/" in ipam_type:
        raise CNIError(INVALID_CONFIG, "invalid ipam.type", f"ipam.type={ipam_type!r}")
    for directory in cni_path:
        candidate = os.path.join(directory, ipam_type)
        if os.path.isfile(candidate):
            return candidate
    raise CNIError(PLUGIN_FAILURE, f'failed to find plugin "{ipam_type}" in path {list(cni_path)}')


def supported_versions(ipam_type: str, env: Mapping[str, str], cni_path: Sequence[str]) -> tuple[str, ...]:
    """The spec versions IPAM `ipam_type` says it speaks (its VERSION), asked once per binary.
    A plugin that does not answer VERSION cannot serve an ADD either: code 50."""
    if ipam_type == IN_PROCESS:
        return tuple(SUPPORTED)
    binary = find_plugin(ipam_type, cni_path)
    try:
        st = os.stat(binary)
    except OSError as exc:
        raise CNIError(PLUGIN_FAILURE, f"failed to find plugin {ipam_type!r}", str(exc)) from None
    identity = (binary, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    known = _versions.get(identity)
    if known is None:
        known = _ask_version(binary, ipam_type, env)
        if len(_versions) >= _VERSIONS_CACHE_MAX:
            _versions.clear()
        _versions[identity] = known
    return known


def _ask_version(binary: str, ipam_type: str, env: Mapping[str, str]) -> tuple[str, ...]:
    child_env = dict(env, CNI_COMMAND="VERSION")
    try:
        proc = subprocess.run([binary], input=b'{"cniVersion":"%s"}' % SPEC_WITH_STATUS.encode(), env=child_env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
        listed = json.loads(proc.stdout)["supportedVersions"] if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, TypeError, KeyError):
        listed = None
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        raise CNIError(NOT_AVAILABLE, f"IPAM plugin {ipam_type} does not answer VERSION", binary)
    return tuple(listed)


def _dies_with_us(command: str, binary: str) -> list[str]:
    """The argv of an IPAM ADD that is killed when this process (thread) dies: a plugin or a
    helper killed while its IPAM runs would otherwise leave the IPAM to reserve an address
    after the ADD's rollback (or the runtime's DEL) has run, and nothing would own it.
    Through util-linux's setpriv (PR_SET_PDEATHSIG), when the node has it."""
    setpriv = _setpriv()
    return [setpriv, "--pdeathsig", "KILL", "--", binary] if command == "ADD" and setpriv else [binary]


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")


def execute(
    command: str,
    ipam_type: str,
    stdin: bytes,
    env: Mapping[str, str],
    cni_path: Sequence[str],
    version: str,
    netns_fd: int | None = None,
    parent=None,
) -> Result | None:
    """Run IPAM `command`; ADD returns its Result (any version, parsed), others None.

    `parent`: the main plugin's own Request, when it has this very stdin and env: an
    in-process IPAM running the same command uses it instead of parsing them again.
    Raises CNIError: a delegate's own error object is passed through unchanged.
    """
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    if ipam_type == IN_PROCESS:
        from .plugin import IpamPlugin  # the in-process cnm-ipam, loaded (as any plugin type) when used

        same = parent is not None and parent.command == command and parent.stdin is stdin and parent.env == child_env
        request = parent if same else parse(child_env, stdin)
        plugin = IpamPlugin()
        if command == "ADD":
            return plugin.add(request)
        {"DEL": plugin.delete, "CHECK": plugin.check, "GC": plugin.gc, "STATUS": plugin.status}[command](request)
        return None
    binary = find_plugin(ipam_type, cni_path)
    try:
        proc = subprocess.run(_dies_with_us(command, binary), input=stdin, env=child_env, stdout=subprocess.PIPE,
                              timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CNIError(PLUGIN_FAILURE, f"failed to run IPAM plugin {ipam_type}", str(exc)) from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            data = json.loads(out)
            if isinstance(data, dict) and "code" in data:
                raise CNIError.from_dict(data)
        except ValueError:
            pass
        raise CNIError(PLUGIN_FAILURE, f"IPAM plugin {ipam_type} failed", out.decode(errors="replace")[:500])
    if command != "ADD":
        return None
    try:
        data = json.loads(out)
    except ValueError:
        raise CNIError(PLUGIN_FAILURE, f"IPAM plugin {ipam_type} printed an invalid result", out[:500].decode(errors="replace")) from None
    return Result.parse(data, version)
