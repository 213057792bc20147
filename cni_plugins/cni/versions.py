"""CNI spec versions and the families that share a result shape."""

from __future__ import annotations

from .errors import INCOMPATIBLE_VERSION, CNIError

SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]


def key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def at_least(version: str, floor: str) -> bool:
    return key(version) >= key(floor)


def family(version: str) -> str:
    """'020' (ip4/ip6), '040' (ips with version) or '100' (ips without version)."""
    if key(version) < (0, 3, 0):
        return "020"
    if key(version) < (1, 0, 0):
        return "040"
    return "100"


def require_supported(version: str) -> str:
    """The config's version, checked against ours; empty means 0.1.0."""
    if version in (None, ""):
        return "0.1.0"
    if not isinstance(version, str) or version not in SUPPORTED:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED)}',
        )
    return version
