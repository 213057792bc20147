"""The host driver (Docker's --net=host): the host's own stack; changes nothing."""

from __future__ import annotations

from ..cni.errors import CHECK_FAILED, INVALID_NETNS, CNIError
from ..cni.result import Interface, IPConfig, Result, Route
from ..linux import links, netns
from .base import Driver

RT_SCOPE_UNIVERSE = 0


class HostDriver(Driver):
    name = "host"
    uses_host_netns = True

    @staticmethod
    def require_host(ctx) -> None:
        if ctx.netns_fd is None or netns.identity_of(ctx.netns_fd) != netns.own_identity():
            raise CNIError(
                INVALID_NETNS,
                "CNI_NETNS is not the host network namespace",
                f"{ctx.request.netns!r} is not the namespace this plugin runs in ({netns.SELF})",
            )

    def join(self, ctx, network, endpoint, sandbox) -> Result:
        self.require_host(ctx)
        result = Result()
        with links.rtnl() as ipr:
            position: dict[int, int] = {}
            for link in sorted(ipr.iproute.get_links(), key=lambda l: l["index"]):
                if link["ifi_type"] == 772:  # ARPHRD_LOOPBACK
                    continue
                position[link["index"]] = len(result.interfaces)
                result.interfaces.append(
                    Interface(
                        name=link.get_attr("IFLA_IFNAME"),
                        mac=link.get_attr("IFLA_ADDRESS") or "",
                        sandbox=ctx.request.netns,
                    )
                )
            for index, addr, plen, scope in links.addresses(ipr):
                if scope == RT_SCOPE_UNIVERSE and index in position:
                    result.ips.append(IPConfig(address=f"{addr}/{plen}", interface=position[index]))
            for fam, gw, _ in links.default_routes(ipr):
                result.routes.append(Route(dst="0.0.0.0/0" if fam == 4 else "::/0", gw=gw))
        return result

    def check(self, ctx, network, endpoint, sandbox, prev) -> None:
        try:
            self.require_host(ctx)
        except CNIError as err:
            raise CNIError(CHECK_FAILED, err.msg, err.details) from None
