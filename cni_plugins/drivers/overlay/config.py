"""The cnm-overlay config: the overlay's own keys, plus the cnm-bridge keys that mean the same
things for the node-local part (ipMasq, icc, mtu, hairpinMode, ...). Errors: CNI code 7
naming the key."""

from __future__ import annotations

import ipaddress
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from ...cni.errors import INVALID_CONFIG, CNIError
from ...cni.request import Request

DEFAULT_PREFIX = "/cnm"
# cnm-bridge keys passed through unchanged to the node-local bridge (the same keys mean the
# same things); the bridge's name, gateway and IPAM are the overlay's.
BRIDGE_KEYS = ("ipMasq", "icc", "hairpinMode", "promiscMode", "macspoofchk", "enabledad", "portIsolation",
               "hostBindingIP", "isolateNetworks", "ipv6LinkLocal", "dns")
REFUSED_BRIDGE_KEYS = ("bridge", "ipam", "isGateway", "isDefaultGateway", "vlan", "vlanTrunk",
                       "disableContainerInterface", "forceAddress")


class StoreConf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoints: list[StrictStr] = Field(min_length=1)
    prefix: StrictStr = DEFAULT_PREFIX
    caFile: StrictStr = ""
    certFile: StrictStr = ""
    keyFile: StrictStr = ""

    @model_validator(mode="after")
    def _valid(self) -> "StoreConf":
        from .etcd import split_endpoint

        for endpoint in self.endpoints:
            try:
                split_endpoint(endpoint)
            except ValueError as exc:
                raise ValueError(f"store.endpoints: {exc}") from None
        if not self.prefix.startswith("/") or "\0" in self.prefix:
            raise ValueError(f"store.prefix: {self.prefix!r} must be an absolute key prefix (e.g. /cnm)")
        if bool(self.certFile) != bool(self.keyFile):
            raise ValueError("store.certFile, store.keyFile: a client certificate needs both")
        return self


class OverlayConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: StrictStr
    subnet: StrictStr
    hostSubnetLength: StrictInt = Field(24, ge=1, le=30)
    vni: StrictInt = Field(1, ge=1, le=16777215)
    port: StrictInt = Field(4789, ge=1, le=65535)
    underlayInterface: StrictStr = ""
    underlayAddress: StrictStr = ""
    mtu: StrictInt = Field(0, ge=0, le=65535)
    ipMasq: StrictBool = False
    icc: StrictBool = True
    nodeName: StrictStr = ""
    leaseTTL: StrictInt = Field(60, ge=2, le=86400)
    dnsEnabled: Optional[StrictBool] = None
    store: StoreConf

    @model_validator(mode="after")
    def _consistent(self) -> "OverlayConfig":
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError:
            raise ValueError(f"subnet: {self.subnet!r} is not a network (CIDR with its host bits zero)") from None
        if net.version != 4:
            raise ValueError(f"subnet: {self.subnet} is IPv6; cnm-overlay takes an IPv4 subnet")
        if self.hostSubnetLength <= net.prefixlen:
            raise ValueError(f"hostSubnetLength: /{self.hostSubnetLength} is not smaller than subnet {net}")
        if self.underlayInterface and self.underlayAddress:
            raise ValueError("underlayInterface, underlayAddress: set one of them")
        if self.underlayAddress:
            try:
                ipaddress.IPv4Address(self.underlayAddress)
            except ValueError:
                raise ValueError(f"underlayAddress: {self.underlayAddress!r} is not an IPv4 address") from None
        if self.mtu and self.mtu < 576:
            raise ValueError(f"mtu: {self.mtu} is below IPv4's minimum (576)")
        if self.nodeName and (len(self.nodeName) > 253 or not self.nodeName.isprintable()):
            raise ValueError("nodeName: at most 253 printable characters")
        return self

    @property
    def network(self):
        return ipaddress.ip_network(self.subnet)


def load(request: Request) -> OverlayConfig:
    for key in REFUSED_BRIDGE_KEYS:
        if key in request.config:
            raise CNIError(INVALID_CONFIG, f"invalid {key}",
                           f"{key}: not a cnm-overlay key (the overlay names its bridge and runs its own IPAM)")
    try:
        return OverlayConfig.model_validate(dict(request.config))
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        key = ".".join(str(p) for p in err.get("loc", ())) or (msg.split(":", 1)[0] if ":" in msg else "")
        raise CNIError(INVALID_CONFIG, f"invalid {key}" if key else "invalid overlay config", msg) from None
