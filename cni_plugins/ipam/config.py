"""The cnm-ipam configuration: every host-local key plus `defaultAddressPools`.

Read from the whole network config, as host-local does:
range sets come from runtimeConfig.ipRanges, then the legacy single range
under `ipam`, then `ipam.ranges`; requested IPs from CNI_ARGS `IP`,
args.cni.ips and runtimeConfig.ips. Keys match case-insensitively (Go's JSON
decoding does). Every problem is a CNIError code 7 naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from ..cni import versions
from ..cni.errors import INVALID_CONFIG, INVALID_ENV, CNIError
from ..cni.request import Request
from ..cni.result import Route
from .disk import DEFAULT_DATA_DIR, PathError, lease_dir_path
from .pools import default_pools
from .ranges import IP, Net, RangeError, RangeSet, make_range, parse_cidr, parse_ip, parse_requested_ip, validate_set

MAX_POOL_CANDIDATES = 1 << 20  # a pool list is walked lazily, but keep it sane


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RangeModel(_Model):
    subnet: StrictStr
    rangeStart: Optional[StrictStr] = None
    rangeEnd: Optional[StrictStr] = None
    gateway: Optional[StrictStr] = None


class PoolModel(_Model):
    base: StrictStr
    size: StrictInt


class IpamModel(_Model):
    type: Optional[StrictStr] = None
    subnet: Optional[StrictStr] = None
    rangeStart: Optional[StrictStr] = None
    rangeEnd: Optional[StrictStr] = None
    gateway: Optional[StrictStr] = None
    ranges: Optional[list[list[RangeModel]]] = None
    routes: Optional[list[dict[str, Any]]] = None
    dataDir: Optional[StrictStr] = None
    resolvConf: Optional[StrictStr] = None
    defaultAddressPools: Optional[list[PoolModel]] = None


# lower-case key -> the model's spelling, for every model above
_CANONICAL = {
    name.lower(): name
    for model in (RangeModel, PoolModel, IpamModel)
    for name in model.model_fields
}


def canonical_keys(value: Any) -> Any:
    """Rename known keys to their canonical spelling at every depth (Go matches case-insensitively)."""
    if isinstance(value, dict):
        return {_CANONICAL.get(str(k).lower(), k): canonical_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical_keys(v) for v in value]
    return value


@dataclass
class IpamConfig:
    network: str
    version: str
    data_dir: str
    range_sets: list[RangeSet] = field(default_factory=list)  # empty: use a default pool
    routes: list[Route] = field(default_factory=list)
    resolv_conf: str = ""
    requested: list[IP] = field(default_factory=list)
    pools: list[tuple[Net, int]] = field(default_factory=default_pools)


def _loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _invalid(key: str, message: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"invalid {key}: {message}", key)


def _validate(model: type[BaseModel], data: Any, prefix: str):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _invalid(_loc(prefix, tuple(first["loc"])), first["msg"]) from None


def _range_sets(raw_sets: list, prefix: str) -> list[tuple[str, list[RangeModel]]]:
    return [(f"{prefix}[{i}]", list(rs)) for i, rs in enumerate(raw_sets)]


def _build_set(prefix: str, models: list[RangeModel], index: int) -> RangeSet:
    ranges = []
    for j, m in enumerate(models):
        key = prefix if prefix == "ipam" else f"{prefix}[{j}]"  # the legacy range lives in ipam itself
        try:
            ranges.append(make_range(m.subnet, m.rangeStart, m.rangeEnd, m.gateway))
        except RangeError as exc:
            raise _invalid(f"{key}.{exc.key}", f"range set {index}: {exc.message}") from None
    try:
        return validate_set(ranges)
    except RangeError as exc:
        raise _invalid(prefix + exc.key, f"range set {index}: {exc.message}") from None


def _route(route: dict, key: str) -> Route:
    """One route of the config: dst a CIDR and gw an address exactly as Go parses them, the
    other fields integers (no "5" or true taken for 5 or 1)."""
    for name, parse in (("dst", parse_cidr), ("gw", parse_ip)):
        value = route.get(name)
        if value is None or value == "" and name == "gw":
            continue
        if not isinstance(value, str):
            raise _invalid(f"{key}.{name}", f"{value!r} must be a string")
        try:
            parse(value)
        except ValueError:
            raise _invalid(f"{key}.{name}", f"invalid {'CIDR' if name == 'dst' else 'IP'} address: {value}") from None
    try:
        return Route.model_validate(route, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _invalid(_loc(key, tuple(first["loc"])), first["msg"]) from None


def _pools(models: list[PoolModel]) -> list[tuple[Net, int]]:
    pools = []
    total = 0
    for i, m in enumerate(models):
        key = f"ipam.defaultAddressPools[{i}]"
        try:
            address, base = parse_cidr(m.base)
        except ValueError as exc:
            raise _invalid(f"{key}.base", str(exc)) from None
        if address != base.network_address:
            raise _invalid(f"{key}.base", f"{m.base} has host bits set")
        if not base.prefixlen <= m.size <= base.max_prefixlen - 2:
            raise _invalid(f"{key}.size", f"size {m.size} must lie between {base.prefixlen} and {base.max_prefixlen - 2}")
        total += 1 << min(m.size - base.prefixlen, 63)
        if total > MAX_POOL_CANDIDATES:
            raise _invalid(f"{key}.size", f"more than {MAX_POOL_CANDIDATES} pools in defaultAddressPools")
        pools.append((base, m.size))
    if not pools:
        raise _invalid("ipam.defaultAddressPools", "empty list of pools")
    return pools


def requested_ips(request: Request) -> list[IP]:
    """CNI_ARGS IP, then args.cni.ips, then runtimeConfig.ips (duplicates dropped)."""
    out: list[IP] = []

    def add(text: Any, key: str, code: int = INVALID_CONFIG) -> None:
        try:
            if not isinstance(text, str):
                raise ValueError(f"{text!r} is not a string")
            addr = parse_requested_ip(text)
        except ValueError:
            raise CNIError(code, f"invalid {key}: cannot understand ip {text!r}", key) from None
        if addr not in out:
            out.append(addr)

    if request.cni_args.get("IP"):
        add(request.cni_args["IP"], "CNI_ARGS IP", INVALID_ENV)
    args = request.config.get("args") or {}
    cni = next((v for k, v in args.items() if str(k).lower() == "cni"), None) if isinstance(args, dict) else None
    ips = next((v for k, v in cni.items() if str(k).lower() == "ips"), None) if isinstance(cni, dict) else None
    if ips is not None:
        if not isinstance(ips, list):
            raise _invalid("args.cni.ips", "must be a list of IP addresses")
        for i, text in enumerate(ips):
            add(text, f"args.cni.ips[{i}]")
    rc_ips = request.runtime_config("ips")
    if rc_ips is not None:
        if not isinstance(rc_ips, list):
            raise _invalid("runtimeConfig.ips", "must be a list of IP addresses")
        for i, text in enumerate(rc_ips):
            add(text, f"runtimeConfig.ips[{i}]")
    return out


_validated: dict[tuple, IpamConfig] = {}  # (network, version, ipam config, runtime ranges) -> config
_VALIDATED_MAX = 256


def load(request: Request, lenient: bool = False) -> IpamConfig:
    """The IPAM config of `request`. lenient (DEL): only what locates the leases must be valid."""
    raw = request.config.get("ipam")
    if not isinstance(raw, dict):
        raise CNIError(INVALID_CONFIG, "IPAM config missing 'ipam' key", "ipam")
    raw = canonical_keys(raw)
    data_dir = raw.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise _invalid("ipam.dataDir", f"{data_dir!r} must be a string")
    try:
        lease_dir_path(data_dir, request.network)
    except PathError as exc:
        raise _invalid("ipam.dataDir", str(exc)) from None
    cfg = IpamConfig(network=request.network, version=request.version, data_dir=data_dir)
    if lenient:
        try:
            return _complete(cfg, request, raw)
        except CNIError:
            return cfg
    # The resident helper meets the same network config on every ADD: validating it again
    # (pydantic, ranges, routes) was ~0.2 ms of each. Only what a request adds is per request.
    key = (request.network, request.version, json.dumps(raw, sort_keys=True, default=str),
           json.dumps(request.runtime_config("ipRanges"), sort_keys=True, default=str))
    known = _validated.get(key)
    if known is not None:
        return _own_copy(known, requested_ips(request))
    cfg = _complete(cfg, request, raw)
    if len(_validated) >= _VALIDATED_MAX:
        _validated.clear()
    _validated[key] = _own_copy(cfg, [])
    return cfg


def _own_copy(cfg: IpamConfig, requested: list) -> IpamConfig:
    """`cfg` with lists and routes of its own: what a request changes in it stays its own."""
    return replace(cfg, range_sets=list(cfg.range_sets), routes=[r.model_copy() for r in cfg.routes],
                   pools=list(cfg.pools), requested=requested)


def _complete(cfg: IpamConfig, request: Request, raw: dict) -> IpamConfig:
    ipam = _validate(IpamModel, raw, "ipam")
    sources: list[tuple[str, list[RangeModel]]] = []
    rc_ranges = request.runtime_config("ipRanges")
    if rc_ranges:
        if not isinstance(rc_ranges, list):
            raise _invalid("runtimeConfig.ipRanges", "must be a list of range sets")
        wrapped = _validate(IpamModel, {"ranges": canonical_keys(rc_ranges)}, "runtimeConfig.ipRanges")
        sources += _range_sets(wrapped.ranges or [], "runtimeConfig.ipRanges")
    if "subnet" in raw:  # the legacy single range, prepended as its own set ("" and null are errors, as in Go)
        if not isinstance(ipam.subnet, str):
            raise _invalid("ipam.subnet", "invalid CIDR address: null")
        sources.append(("ipam", [RangeModel(subnet=ipam.subnet, rangeStart=ipam.rangeStart,
                                            rangeEnd=ipam.rangeEnd, gateway=ipam.gateway)]))
    if ipam.ranges == [] and not sources:  # host-local refuses it; only a config without ranges gets a pool
        raise _invalid("ipam.ranges", "no IP ranges specified (leave `ranges` out for a default address pool)")
    sources += _range_sets(ipam.ranges or [], "ipam.ranges")

    cfg.range_sets = [_build_set(prefix, models, i) for i, (prefix, models) in enumerate(sources)]
    per_family = [sum(1 for s in cfg.range_sets if s.version == v) for v in (4, 6)]
    if max(per_family) > 1 and not versions.at_least(request.version, "0.3.0"):
        raise _invalid("ipam.ranges", f"CNI version {request.version} does not support more than 1 address per family")
    for i, a in enumerate(cfg.range_sets):
        for j in range(i + 1, len(cfg.range_sets)):
            if a.overlaps(cfg.range_sets[j]):
                raise _invalid("ipam.ranges", f"range set {i} overlaps with {j}")

    for i, route in enumerate(ipam.routes or []):
        cfg.routes.append(_route(route, f"ipam.routes[{i}]"))
    cfg.resolv_conf = ipam.resolvConf or ""
    if ipam.defaultAddressPools is not None:
        cfg.pools = _pools(ipam.defaultAddressPools)
    cfg.requested = requested_ips(request)
    return cfg
