"""The runtime's list of attachments to keep in a CNI GC (`cni.dev/valid-attachments`, and the
legacy `cni.dev/attachments`), read strictly and before anything is removed."""

from __future__ import annotations

from .errors import INVALID_CONFIG, CNIError

KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(config) -> set[tuple[str, str]] | None:
    """{(containerID, ifname)} of every list the config carries; None when it carries none
    (cnitool's gc: no information, so nothing may be removed). A list that cannot be read is
    code 7: GC must not take an unreadable list for an empty one. Keys are matched without
    regard to case, as libcni's (Go's) JSON decoding does."""
    present = [key for key in KEYS if key in config]
    if not present:
        return None
    valid: set[tuple[str, str]] = set()
    for key in present:
        items = config[key]
        if not isinstance(items, list):
            raise CNIError(INVALID_CONFIG, f"invalid {key}", f"{key} must be a list of {{containerID, ifname}}")
        for index, item in enumerate(items):
            fields = {str(k).lower(): v for k, v in item.items()} if isinstance(item, dict) else {}
            cid, ifname = fields.get("containerid"), fields.get("ifname")
            if not (isinstance(cid, str) and cid and isinstance(ifname, str) and ifname):
                raise CNIError(INVALID_CONFIG, f"invalid {key}[{index}]",
                               "each attachment needs non-empty strings containerID and ifname")
            valid.add((cid, ifname))
    return valid
