"""Kernel and tool failures of a driver's steps, as CNI errors that say what the driver was
doing (every driver's: the bridge's, the macvlan's, the overlay's through the bridge's)."""

from __future__ import annotations

from ..cni.errors import PLUGIN_FAILURE, CNIError
from ..linux.addr import AddrError
from ..linux.bridge import BridgeError
from ..linux.conntrack import ConntrackError
from ..linux.links import NetlinkError
from ..linux.macvlan import MacvlanError
from ..linux.veth import VethError


class kernel_errors:
    """`with kernel_errors("do x"):` kernel/tool failures become CNI errors (code 100) that say
    what we were doing. A class, not a generator: it wraps each kernel step of every ADD."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, CNIError) or not isinstance(exc, Exception):
            return False
        reason = _kernel_failure(exc)
        if reason is None:
            return False
        raise CNIError(PLUGIN_FAILURE, f"failed to {self.what}", reason) from None


def _kernel_failure(exc: Exception) -> str | None:
    """What a kernel/tool failure says; None for any other exception (a bug: not converted)."""
    from ..linux.nft import NftError  # (nftables: loaded only by what programs it)

    if isinstance(exc, (AddrError, BridgeError, ConntrackError, MacvlanError, NftError, VethError)):
        return str(exc)
    if isinstance(exc, NetlinkError):
        return exc.args[1] if len(exc.args) > 1 else str(exc)
    if isinstance(exc, OSError):
        return str(exc)
    return None
