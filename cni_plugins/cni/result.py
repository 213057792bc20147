"""CNI result models and conversion between spec versions.

Internally every result is a `Result` in the newest shape (1.1.0). `Result.parse`
reads a result of any version (a prevResult, an IPAM result) and `Result.emit`
writes it in exactly the requested version.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache, partial
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, field_validator

from . import versions
from .errors import DECODE_FAILURE, CNIError


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Interface(_Model):
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: Optional[int] = None
    socketPath: Optional[str] = None
    pciID: Optional[str] = None


_network = partial(ipaddress.ip_network, strict=False)


@lru_cache(maxsize=4096)
def _canonical(parse, value: str) -> str:
    """The canonical text of `value` as `parse` (ip_interface, ip_address, _network) reads it:
    an ADD builds the same few models (IPAM result, endpoint record, result) from the same
    strings several times, and each parse is ~15 µs. Invalid text raises every time
    (lru_cache keeps no exceptions)."""
    return str(parse(value))


def _family(canonical: str) -> int:
    """4 or 6 of a canonical address, interface or network (only IPv6 text has a colon)."""
    return 6 if ":" in canonical else 4


class IPConfig(_Model):
    address: str
    gateway: Optional[str] = None
    interface: Optional[int] = None

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return _canonical(ipaddress.ip_interface, value)

    @field_validator("gateway")
    @classmethod
    def _ip(cls, value: Optional[str]) -> Optional[str]:
        return _canonical(ipaddress.ip_address, value) if value else None

    @property
    def family(self) -> int:
        return _family(self.address)


class Route(_Model):
    dst: str
    gw: Optional[str] = None
    mtu: Optional[int] = None
    advmss: Optional[int] = None
    priority: Optional[int] = None
    table: Optional[int] = None
    scope: Optional[int] = None

    @field_validator("dst")
    @classmethod
    def _net(cls, value: str) -> str:
        return _canonical(_network, value)

    @field_validator("gw")
    @classmethod
    def _ip(cls, value: Optional[str]) -> Optional[str]:
        return _canonical(ipaddress.ip_address, value) if value else None

    @property
    def family(self) -> int:
        return _family(self.dst)


class DNS(_Model):
    nameservers: list[str] = []
    domain: str = ""
    search: list[str] = []
    options: list[str] = []

    def emit(self) -> dict:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


ROUTE_11_FIELDS = ("mtu", "advmss", "priority", "table", "scope")
IFACE_11_FIELDS = ("mtu", "socketPath", "pciID")


class Result(_Model):
    interfaces: list[Interface] = []
    ips: list[IPConfig] = []
    routes: list[Route] = []
    dns: DNS = DNS()

    # ---- input -------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Any, version: str) -> "Result":
        """Read a result printed in `version` (its own cniVersion wins when present)."""
        if not isinstance(data, dict):
            raise CNIError(DECODE_FAILURE, "invalid result", f"expected a JSON object, got {type(data).__name__}")
        own = data.get("cniVersion") or version
        if own not in versions.SUPPORTED:
            raise CNIError(DECODE_FAILURE, "invalid result", f"unsupported result cniVersion {own!r}")
        try:
            if versions.family(own) == "020":
                return cls._from_020(data)
            return cls.model_validate(
                {
                    "interfaces": data.get("interfaces") or [],
                    "ips": data.get("ips") or [],
                    "routes": data.get("routes") or [],
                    "dns": data.get("dns") or {},
                }
            )
        except CNIError:
            raise
        except Exception as exc:  # pydantic.ValidationError, ValueError from ipaddress
            raise CNIError(DECODE_FAILURE, "invalid result", _short(exc)) from None

    @classmethod
    def _from_020(cls, data: dict) -> "Result":
        ips, routes = [], []
        for key in ("ip4", "ip6"):
            block = data.get(key)
            if not block:
                continue
            ips.append(IPConfig(address=block["ip"], gateway=block.get("gateway")))
            routes.extend(Route(dst=r["dst"], gw=r.get("gw")) for r in block.get("routes") or [])
        return cls(ips=ips, routes=routes, dns=DNS.model_validate(data.get("dns") or {}))

    # ---- output ------------------------------------------------------------------------
    def emit(self, version: str) -> dict:
        """The result as a JSON object of exactly `version`."""
        fam = versions.family(version)
        if fam == "020":
            return self._emit_020(version)
        out: dict[str, Any] = {"cniVersion": version}
        newest = version == "1.1.0"
        if self.interfaces:
            out["interfaces"] = [
                _drop_none(i.model_dump(), keep_extra=newest, extra=IFACE_11_FIELDS) for i in self.interfaces
            ]
        if self.ips:
            ips = []
            for ip in self.ips:
                entry: dict[str, Any] = {}
                if fam == "040":
                    entry["version"] = str(ip.family)
                entry["address"] = ip.address
                if ip.gateway:
                    entry["gateway"] = ip.gateway
                if ip.interface is not None:
                    entry["interface"] = ip.interface
                ips.append(entry)
            out["ips"] = ips
        if self.routes:
            out["routes"] = [_drop_none(r.model_dump(), keep_extra=newest, extra=ROUTE_11_FIELDS) for r in self.routes]
        out["dns"] = self.dns.emit()  # also empty, as the Go plugins print it in every version
        return out

    def _emit_020(self, version: str) -> dict:
        out: dict[str, Any] = {"cniVersion": version}
        for fam, key in ((4, "ip4"), (6, "ip6")):
            first = next((ip for ip in self.ips if ip.family == fam), None)
            if first is None:
                continue
            block: dict[str, Any] = {"ip": first.address}
            if first.gateway:
                block["gateway"] = first.gateway
            routes = [{"dst": r.dst, **({"gw": r.gw} if r.gw else {})} for r in self.routes if r.family == fam]
            if routes:
                block["routes"] = routes
            out[key] = block
        if "ip4" not in out and "ip6" not in out:
            raise CNIError(DECODE_FAILURE, "cannot convert: no valid IP addresses", f"to version {version}")
        out["dns"] = self.dns.emit()
        return out


def _drop_none(data: dict, keep_extra: bool, extra: tuple[str, ...]) -> dict:
    out = {}
    for k, v in data.items():
        if v is None or (k in ("sandbox", "mac") and v == ""):
            continue
        if k in extra and not keep_extra:
            continue
        if k == "gw" and not v:
            continue
        out[k] = v
    return out


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:500]
