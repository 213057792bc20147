"""Delegated IPAM calls any driver makes, and the record that lets DEL release a lease later.

ADD's stdin and the CNI_* variables it ran with are kept on the endpoint: DEL may
come with another container's id (last member of a shared sandbox), with no netns,
or with a changed config, and must still release exactly what ADD reserved.
"""

from __future__ import annotations

import base64
import json

from ..cni.errors import NOT_AVAILABLE, PLUGIN_FAILURE, CNIError
from ..cni.request import Request
from ..cni.result import Result
from ..ipam import client


# The variables a delegated IPAM keys its reservation on (host-local: container id + ifname).
RECORDED_ENV = ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS", "CNI_ARGS")


def record(request: Request, ipam_type: str) -> dict:
    return {
        "type": ipam_type,
        "stdin": base64.b64encode(request.stdin).decode(),
        "env": {k: request.env.get(k, "") for k in RECORDED_ENV},
    }


def add(request: Request, ipam_type: str) -> Result:
    return client.execute("ADD", ipam_type, request.stdin, request.env, request.cni_path, request.version,
                          parent=request)


# IPAM plugins whose ADD is all or nothing: a failed one reserved nothing (host-local releases
# what it took for earlier ranges before it fails; cnm-ipam likewise).
ALL_OR_NOTHING = frozenset({"cnm-ipam", "host-local"})


def undoes_failed_add(ipam_type: str) -> bool:
    return ipam_type in ALL_OR_NOTHING


def release_recorded(rec: dict, request: Request) -> None:
    """IPAM DEL with ADD's stdin and ids; the current process's env and CNI_PATH otherwise."""
    env = dict(request.env)
    env.update(rec.get("env") or {})
    stdin = base64.b64decode(rec["stdin"])
    client.execute("DEL", rec["type"], stdin, env, request.cni_path, request.version)


def held_by(endpoints) -> set[tuple[str, str]]:
    """(CNI_CONTAINERID, CNI_IFNAME) the endpoints' recorded IPAM calls reserved under."""
    held = set()
    for ep in endpoints:
        env = (ep.data.get("ipam") or {}).get("env") or {}
        held.add((env.get("CNI_CONTAINERID") or ep.container_id, env.get("CNI_IFNAME") or ep.ifname))
    return held


def gc(request: Request, ipam_type: str, valid: set[tuple[str, str]]) -> None:
    """GC with the request's config, its valid-attachments replaced by `valid`."""
    config = json.loads(request.stdin)
    config.pop("cni.dev/attachments", None)
    config["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
    client.execute("GC", ipam_type, json.dumps(config).encode(), request.env, request.cni_path, request.version)


def delegate(command: str, request: Request, ipam_type: str) -> None:
    """CHECK / STATUS / GC / DEL with the request's own stdin."""
    client.execute(command, ipam_type, request.stdin, request.env, request.cni_path, request.version)


def speaks_status(request: Request, ipam_type: str) -> bool:
    """Whether the IPAM knows STATUS and GC: its VERSION lists 1.1.0 (asked once per binary
    in the helper). An older one (Debian's host-local 1.1.1) takes either for an ADD without
    a container id and fails."""
    return client.SPEC_WITH_STATUS in client.supported_versions(ipam_type, request.env, request.cni_path)


def require_version(request: Request, ipam_type: str) -> None:
    """Code 50 when the IPAM does not speak the config's cniVersion: every ADD would fail with
    its `incompatible CNI versions` (the IPAM gets the config unchanged)."""
    try:
        listed = client.supported_versions(ipam_type, request.env, request.cni_path)
    except CNIError as err:
        if err.code != PLUGIN_FAILURE:
            raise
        raise CNIError(NOT_AVAILABLE, err.msg, err.details) from None  # no such plugin: no ADD either
    if request.version not in listed:
        raise CNIError(NOT_AVAILABLE, f"IPAM plugin {ipam_type} does not support CNI version {request.version}",
                       f"it lists {', '.join(listed)}; an ADD with this config would fail: use an IPAM that "
                       f"speaks {request.version} (cnm-ipam does) or a lower cniVersion")
