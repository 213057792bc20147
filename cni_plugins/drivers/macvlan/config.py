"""The cnm-macvlan config: every key of the reference `macvlan` plugin, same defaults.

Validation errors are CNI code 7 naming the key. What needs the kernel (the default
master, the master's MTU) is resolved by the driver, not here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from ...cni.errors import INVALID_CONFIG, CNIError
from ...cni.request import IFNAME_RULE, Request, valid_interface_name
from ..bridge.config import DnsConf, IpamRef  # the same keys mean the same things

MODES = ("bridge", "private", "vepa", "passthru")
MAC_RE = re.compile(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}")  # fullmatch: `$` would pass a trailing "\n"
MIN_MTU = 68  # the least the kernel takes for an Ethernet link (ETH_MIN_MTU)


class MacvlanConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    master: StrictStr = ""  # "": the interface of the default route (in the container with linkInContainer)
    mode: StrictStr = "bridge"
    mtu: StrictInt = Field(0, ge=0, le=65535)  # 0: the master's
    mac: StrictStr = ""
    linkInContainer: StrictBool = False
    bcqueuelen: StrictInt = Field(0, ge=0, le=2**32 - 1)  # 0: the kernel's default
    ipam: Optional[IpamRef] = None
    dns: Optional[DnsConf] = None

    @model_validator(mode="after")
    def _consistent(self) -> "MacvlanConfig":
        if self.master and not valid_interface_name(self.master):
            raise ValueError(f"master: {self.master!r} is not a valid interface name: {IFNAME_RULE}")
        if self.mode == "":
            self.mode = "bridge"
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown macvlan mode {self.mode!r} (one of {', '.join(MODES)})")
        if 0 < self.mtu < MIN_MTU:
            raise ValueError(f"mtu: {self.mtu} is below {MIN_MTU}, the least MTU of an Ethernet link")
        return self

    @property
    def ipam_type(self) -> str:
        return self.ipam.type if self.ipam is not None else ""


def load(request: Request) -> MacvlanConfig:
    """The config of this request; CNIError 7 naming the offending key."""
    try:
        return MacvlanConfig.model_validate(dict(request.config))
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        key = ".".join(str(p) for p in err.get("loc", ())) or (msg.split(":", 1)[0] if ":" in msg else "")
        raise CNIError(INVALID_CONFIG, f"invalid {key}" if key else "invalid macvlan config", msg) from None


def requested_mac(request: Request, conf: MacvlanConfig) -> str:
    """The container's MAC asked for: the config's `mac`, then CNI_ARGS MAC, args.cni.mac,
    runtimeConfig.mac (the last one set wins); "" when none. Code 7 for one that is not a
    unicast address (multicast, all-zero): the kernel would refuse it, or a LAN drop it. (In
    passthru mode the kernel ignores it: the macvlan has its master's MAC, as the reference's.)"""
    mac, where = conf.mac, "mac"
    if request.cni_args.get("MAC"):
        mac, where = request.cni_args["MAC"], "CNI_ARGS MAC"
    args = request.config.get("args") or {}
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("mac"):
        mac, where = cni["mac"], "args.cni.mac"
    if request.runtime_config("mac"):
        mac, where = request.runtime_config("mac"), "runtimeConfig.mac"
    if not mac:
        return ""
    if not isinstance(mac, str) or not MAC_RE.fullmatch(mac):
        raise CNIError(INVALID_CONFIG, "invalid mac", f"{where}: {mac!r} is not a MAC address")
    mac = mac.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise CNIError(INVALID_CONFIG, "invalid mac", f"{where}: {mac} is a multicast address")
    if mac == "00:00:00:00:00:00":
        raise CNIError(INVALID_CONFIG, "invalid mac", f"{where}: {mac} is the all-zero address")
    return mac


def endpoint_mac(endpoint_id: str) -> str:
    """The MAC of an endpoint that asks for none: derived from its id, so the same attachment
    (network, container, ifname) keeps its MAC across re-ADDs, and the LAN's neighbour caches
    and DHCP servers see one address. Unicast, locally administered."""
    octets = bytearray(hashlib.sha256(b"cnm-macvlan\0" + endpoint_id.encode()).digest()[:6])
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)
