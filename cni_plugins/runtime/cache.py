"""libcni's result cache, byte-for-byte interchangeable with cnitool's.

<cacheDir>/results/<network>-<containerID>-<ifname> holds one JSON document:
{"kind":"cniCacheV1","containerId","config" (base64 of the list's bytes),"ifName",
 "networkName","netns","cniArgs":[[k,v],...],"capabilityArgs",{...},"result":{...}}
(netns, cniArgs, capabilityArgs and result omitted when empty). Older files hold a
bare result, which is still readable. Directory 0700, file 0600.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..linux.fs import make_dirs
from .errors import RunnerError

DEFAULT_CACHE_DIR = "/var/lib/cni"
KIND = "cniCacheV1"


@dataclass
class CachedAttachment:
    container_id: str
    network: str
    ifname: str
    config: bytes = b""
    netns: str = ""
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None


def results_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir or DEFAULT_CACHE_DIR, "results")


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    if not network or not container_id or not ifname:
        raise RunnerError(
            f"cache file path requires network name ({network!r}), container ID ({container_id!r}), "
            f"and interface name ({ifname!r})"
        )
    return os.path.join(results_dir(cache_dir), f"{network}-{container_id}-{ifname}")


def _go_sorted(value: Any) -> Any:
    """Go marshals maps with sorted keys; do the same so files match cnitool's."""
    if isinstance(value, dict):
        return {k: _go_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_go_sorted(v) for v in value]
    return value


def encode(att: CachedAttachment) -> bytes:
    doc: dict[str, Any] = {
        "kind": KIND,
        "containerId": att.container_id,
        "config": base64.b64encode(att.config).decode(),
        "ifName": att.ifname,
        "networkName": att.network,
    }
    if att.netns:
        doc["netns"] = att.netns
    if att.cni_args:
        doc["cniArgs"] = [[k, v] for k, v in att.cni_args]
    if att.capability_args:
        doc["capabilityArgs"] = _go_sorted(att.capability_args)
    if att.result:
        doc["result"] = _go_sorted(att.result)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> CachedAttachment | None:
    """A cniCacheV1 document, or None when the bytes are something else (legacy, garbage)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        return None
    try:
        config = base64.b64decode(doc.get("config") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        return None
    args = [(str(p[0]), str(p[1])) for p in doc.get("cniArgs") or [] if isinstance(p, list) and len(p) == 2]
    caps = doc.get("capabilityArgs") or {}
    result = doc.get("result")
    return CachedAttachment(
        container_id=str(doc.get("containerId") or ""),
        network=str(doc.get("networkName") or ""),
        ifname=str(doc.get("ifName") or ""),
        config=config,
        netns=str(doc.get("netns") or ""),
        cni_args=args,
        capability_args=caps if isinstance(caps, dict) else {},
        result=result if isinstance(result, dict) else None,
    )


def write(cache_dir: str, att: CachedAttachment) -> str:
    path = cache_path(cache_dir, att.network, att.container_id, att.ifname)
    directory = os.path.dirname(path)
    make_dirs(directory, 0o700)  # as libcni
    # Written to a temporary file and renamed: a reader never sees half a document.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(att))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_raw(cache_dir: str, network: str, container_id: str, ifname: str) -> bytes | None:
    """The cache file's bytes, None when there is none (read errors count as none, like libcni)."""
    try:
        with open(cache_path(cache_dir, network, container_id, ifname), "rb") as f:
            return f.read()
    except OSError:
        return None


def read(cache_dir: str, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
    data = read_raw(cache_dir, network, container_id, ifname)
    return decode(data) if data is not None else None


def cached_result(cache_dir: str, network: str, container_id: str, ifname: str) -> dict[str, Any] | None:
    """The cached result document: from a cniCacheV1 file, or a legacy bare result."""
    data = read_raw(cache_dir, network, container_id, ifname)
    if data is None:
        return None
    att = decode(data)
    if att is not None:
        return att.result or {}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise RunnerError(f"failed to parse cached result of network {network!r}") from None
    if not isinstance(doc, dict):
        raise RunnerError(f"failed to parse cached result of network {network!r}: not an object")
    return doc


def delete(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    try:
        os.unlink(cache_path(cache_dir, network, container_id, ifname))
    except (FileNotFoundError, RunnerError):
        pass


def attachments(cache_dir: str, container_id: str = "") -> list[CachedAttachment]:
    """libcni's GetCachedAttachments: every cniCacheV1 entry (of one container), sorted by file name."""
    directory = results_dir(cache_dir)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for fname in names:
        if container_id:
            part = f"-{container_id}-"
            pos = fname.find(part)
            if pos <= 0 or pos + len(part) >= len(fname):
                continue
        try:
            with open(os.path.join(directory, fname), "rb") as f:
                att = decode(f.read())
        except OSError:
            continue
        if att is None or (container_id and att.container_id != container_id):
            continue
        if not att.ifname or not att.network:
            continue
        found.append(att)
    return found
