"""The cnm-bridge config: every key of the reference `bridge` plugin, same defaults.

Validation errors are CNI code 7 naming the key. pydantic is imported here, i.e.
only after the entry path has answered VERSION and early errors.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from ...cni.errors import INVALID_CONFIG, CNIError
from ...cni.request import IFNAME_RULE, Request, valid_interface_name
from .ports import host_address

DEFAULT_BRIDGE = "cnm0"
MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")


class VlanTrunk(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: Optional[StrictInt] = None
    minID: Optional[StrictInt] = None
    maxID: Optional[StrictInt] = None


class IpamRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr = ""


class DnsConf(BaseModel):
    model_config = ConfigDict(extra="ignore")
    nameservers: Optional[list[StrictStr]] = None
    domain: StrictStr = ""
    search: Optional[list[StrictStr]] = None
    options: Optional[list[StrictStr]] = None

    def is_set(self) -> bool:
        """As the reference bridge: any list present (even empty) or a domain."""
        return self.nameservers is not None or self.search is not None or self.options is not None or bool(self.domain)


class BridgeConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    bridge: StrictStr = DEFAULT_BRIDGE
    isGateway: StrictBool = False
    isDefaultGateway: StrictBool = False
    forceAddress: StrictBool = False
    ipMasq: StrictBool = False
    mtu: StrictInt = Field(0, ge=0, le=65535)
    hairpinMode: StrictBool = False
    promiscMode: StrictBool = False
    vlan: StrictInt = Field(0, ge=0, le=4094)
    vlanTrunk: Optional[list[VlanTrunk]] = None
    preserveDefaultVlan: StrictBool = False
    macspoofchk: StrictBool = False
    enabledad: StrictBool = False
    portIsolation: StrictBool = False
    disableContainerInterface: StrictBool = False
    # Keep the kernel's IPv6 link-local address on the container end of an IPv4-only
    # endpoint (by default it gets none: driver._ipv6_addr_gen_mode).
    ipv6LinkLocal: StrictBool = False
    # Docker's bridge options: default host address of published ports
    # (host_binding_ipv4), inter-container communication on the bridge (enable_icc),
    # and isolation from the other cnm networks.
    hostBindingIP: StrictStr = ""
    icc: StrictBool = True
    isolateNetworks: StrictBool = False
    ipam: Optional[IpamRef] = None
    dns: Optional[DnsConf] = None

    @model_validator(mode="after")
    def _consistent(self) -> "BridgeConfig":
        if not valid_interface_name(self.bridge):
            raise ValueError(f"bridge: {self.bridge!r} is not a valid interface name: {IFNAME_RULE}")
        if self.hairpinMode and self.promiscMode:
            raise ValueError("hairpinMode, promiscMode: cannot set hairpin mode and promiscuous mode at the same time")
        if self.disableContainerInterface and self.ipam_type:
            raise ValueError("disableContainerInterface: cannot be used together with IPAM (the interface stays down)")
        if self.hostBindingIP:
            try:
                host_address(self.hostBindingIP)
            except ValueError as exc:
                raise ValueError(f"hostBindingIP: {self.hostBindingIP!r} {exc}") from None
        if self.vlanTrunk is not None and self.trunk_vlans() and self.vlan:
            raise ValueError("vlan, vlanTrunk: cannot set vlan and vlanTrunk at the same time")
        return self

    # ---- derived ------------------------------------------------------------------------
    @property
    def ipam_type(self) -> str:
        return self.ipam.type if self.ipam is not None else ""

    @property
    def is_gateway(self) -> bool:
        return self.isGateway or self.isDefaultGateway

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan) or self.vlanTrunk is not None

    def trunk_vlans(self) -> tuple[int, ...]:
        """The trunk's VLAN ids, validated as the reference plugin does."""
        vids: set[int] = set()
        for item in self.vlanTrunk or []:
            if item.minID is not None and item.maxID is not None:
                if not 0 < item.minID <= 4094:
                    raise ValueError("vlanTrunk: incorrect trunk minID parameter")
                if not 0 < item.maxID <= 4094:
                    raise ValueError("vlanTrunk: incorrect trunk maxID parameter")
                if item.maxID < item.minID:
                    raise ValueError("vlanTrunk: minID is greater than maxID in trunk parameter")
                vids.update(range(item.minID, item.maxID + 1))
            elif item.minID is not None or item.maxID is not None:
                raise ValueError("vlanTrunk: minID and maxID should be configured simultaneously")
            if item.id is not None:
                if not 0 < item.id <= 4094:
                    raise ValueError("vlanTrunk: incorrect trunk id parameter")
                vids.add(item.id)
        return tuple(sorted(vids))


def load(request: Request) -> BridgeConfig:
    """The config of this request; CNIError 7 naming the offending key."""
    try:
        return BridgeConfig.model_validate(dict(request.config))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or _key_of(err.get("msg", ""))
        msg = err.get("msg", "invalid value")
        msg = msg.removeprefix("Value error, ")
        raise CNIError(INVALID_CONFIG, f"invalid {key}" if key else "invalid bridge config", msg) from None


def _key_of(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    return msg.split(":", 1)[0] if ":" in msg else ""


def random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel gives a new veth end)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def requested_mac(request: Request) -> str:
    """MAC for the container interface: CNI_ARGS MAC, then args.cni.mac, then runtimeConfig.mac (last wins)."""
    mac = request.cni_args.get("MAC", "")
    args = request.config.get("args") or {}
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        mac = cni["mac"]
    rc_mac = request.runtime_config("mac")
    if rc_mac:
        mac = rc_mac
    if mac and (not isinstance(mac, str) or not MAC_RE.match(mac)):
        raise CNIError(INVALID_CONFIG, "invalid mac", f"{mac!r} is not a MAC address (CNI_ARGS MAC, args.cni.mac or runtimeConfig.mac)")
    if mac and int(mac.replace("-", ":").split(":")[0], 16) & 1:
        raise CNIError(INVALID_CONFIG, "invalid mac", f"{mac!r} is a multicast address")
    return mac.replace("-", ":").lower()
