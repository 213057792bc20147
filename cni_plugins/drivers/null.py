"""The null driver (Docker's --net=none): a sandbox with only `lo`, up."""

from __future__ import annotations

import ipaddress

from ..cni.errors import CHECK_FAILED, PLUGIN_FAILURE, CNIError
from ..cni.result import Interface, IPConfig, Result
from ..linux import links
from .base import Driver

LOOPBACK_MAC = "00:00:00:00:00:00"


class NullDriver(Driver):
    name = "null"

    def join(self, ctx, network, endpoint, sandbox) -> Result:
        with links.rtnl(ctx.netns_fd) as ipr:
            try:
                links.set_up(ipr, "lo")
            except LookupError:
                raise CNIError(PLUGIN_FAILURE, "no loopback interface in the network namespace") from None
            addrs = links.addresses(ipr, links.link_index(ipr, "lo"))
        prev = ctx.request.config.get("prevResult")
        if prev:  # chained after another plugin: pass its result through, as loopback does
            return Result.parse(prev, ctx.request.version)
        ips = [
            IPConfig(address=f"{addr}/{plen}", interface=0)
            for _, addr, plen, _ in sorted(addrs, key=lambda a: ipaddress.ip_address(a[1]).version)
        ]
        return Result(interfaces=[Interface(name="lo", mac=LOOPBACK_MAC, sandbox=ctx.request.netns)], ips=ips)

    def leave(self, ctx, network, endpoint, sandbox) -> None:
        if ctx.netns_fd is None:
            return
        with links.rtnl(ctx.netns_fd) as ipr:
            try:
                links.set_up(ipr, "lo", up=False)
            except LookupError:
                pass

    def check(self, ctx, network, endpoint, sandbox, prev) -> None:
        with links.rtnl(ctx.netns_fd) as ipr:
            lo = links.get_link(ipr, "lo")
            if lo is None or not links.is_up(lo):
                raise CNIError(CHECK_FAILED, "loopback interface is down", f"netns {ctx.request.netns}")
            for _, addr, plen, _ in links.addresses(ipr, lo["index"]):
                if not ipaddress.ip_address(addr).is_loopback:
                    raise CNIError(CHECK_FAILED, "loopback interface has a non-loopback address", f"{addr}/{plen}")
