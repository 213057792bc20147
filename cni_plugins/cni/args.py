"""CNI_ARGS (`K1=V1;K2=V2`) with Go LoadArgs semantics."""

from __future__ import annotations

from .errors import INVALID_ENV, CNIError

# Keys some plugin of ours understands, or that runtimes always send.
KNOWN_KEYS = frozenset(
    {
        "IgnoreUnknown",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
        "IP",
        "MAC",
        "CNM_CONTAINER",
        "CNM_NAME",  # cnmctl run NAME: the endpoint's name on DNS-enabled networks
    }
)


def truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


def parse_cni_args(raw: str, known: frozenset[str] = KNOWN_KEYS, strict: bool = True) -> dict[str, str]:
    """Parse CNI_ARGS. Keys are case-sensitive; unknown keys fail unless IgnoreUnknown.

    With strict=False (DEL: a teardown must not fail on arguments) bad pairs are skipped.
    """
    pairs: dict[str, str] = {}
    if not raw:
        return pairs
    for item in raw.split(";"):
        if item == "":
            continue
        parts = item.split("=")
        if len(parts) != 2:
            if not strict:
                continue
            raise CNIError(INVALID_ENV, "invalid CNI_ARGS", f"pair {item!r} is not of the form KEY=VALUE")
        pairs[parts[0]] = parts[1]
    if strict and not truthy(pairs.get("IgnoreUnknown", "0")):
        unknown = sorted(k for k in pairs if k not in known)
        if unknown:
            raise CNIError(
                INVALID_ENV,
                "invalid CNI_ARGS",
                f"unknown keys {unknown} (set IgnoreUnknown=1 to ignore them)",
            )
    return pairs
