"""The container driver (Docker's --net=container:<id>), done the CNM way.

The endpoint is only a membership: the container joins the Sandbox of the container
it names, owns nothing in it, and reports the sandbox's stack (the results its other
endpoints recorded at ADD, merged). Which sandbox, the netns identity check, the host
guard and the sandbox's lifetime (until its last member leaves) are the controller's.
"""

from __future__ import annotations

import ipaddress

from ..cni.errors import CHECK_FAILED, INVALID_CONFIG, CNIError
from ..cni.request import ID_PATTERN, Request
from ..cni.result import DNS, Result
from ..linux import links
from .base import Driver, recorded_result

CONFIG_KEY = "container"
ARGS_KEY = "CNM_CONTAINER"


class ContainerDriver(Driver):
    name = "container"
    joins_sandbox = True
    membership_only = True

    def network_options(self, request: Request) -> dict:
        # The named container is per attachment, not a network setting: one templated
        # config serves many joiners (CNI_ARGS CNM_CONTAINER), so it is no option.
        value = request.config.get(CONFIG_KEY)
        if value is not None:
            _valid_id(value, CONFIG_KEY)
        return {}

    def target_container(self, request: Request) -> str:
        """The container whose sandbox to join: CNI_ARGS CNM_CONTAINER, else the config key."""
        if request.cni_args.get(ARGS_KEY):
            target = _valid_id(request.cni_args[ARGS_KEY], f"CNI_ARGS {ARGS_KEY}")
        elif request.config.get(CONFIG_KEY) is not None:
            target = _valid_id(request.config[CONFIG_KEY], CONFIG_KEY)
        else:
            raise CNIError(
                INVALID_CONFIG,
                f"missing {CONFIG_KEY!r}",
                f"cnm-container needs the id of the container to share the network of: config key "
                f"{CONFIG_KEY!r} or CNI_ARGS {ARGS_KEY}=<id>",
            )
        if target == request.container_id:
            raise CNIError(
                INVALID_CONFIG,
                f"invalid {CONFIG_KEY!r}",
                f"container {target} cannot join its own network namespace",
            )
        return target

    def join(self, ctx, network, endpoint, sandbox) -> Result:
        return sandbox_result(ctx.peers, ctx.request.netns, skip_driver=self.name)

    def check(self, ctx, network, endpoint, sandbox, prev) -> None:
        if prev is None:
            return
        current = sandbox_result(ctx.peers, ctx.request.netns, skip_driver=self.name)
        have = {ip.address for ip in current.ips}
        missing = sorted(ip.address for ip in prev.ips if ip.address not in have)
        if missing:
            raise CNIError(
                CHECK_FAILED,
                "the shared sandbox no longer has the addresses of prevResult",
                f"missing {', '.join(missing)}; the sandbox has {', '.join(sorted(have)) or 'none'}",
            )
        self._check_kernel(ctx, prev)

    @staticmethod
    def _check_kernel(ctx, prev: Result) -> None:
        """prevResult's addresses must be configured in the netns itself."""
        with links.rtnl(ctx.netns_fd) as ipr:
            configured = {
                (ipaddress.ip_address(addr), plen) for _, addr, plen, _ in links.addresses(ipr)
            }
        for ip in prev.ips:
            iface = ipaddress.ip_interface(ip.address)
            if (iface.ip, iface.network.prefixlen) not in configured:
                raise CNIError(
                    CHECK_FAILED,
                    "address of prevResult is not configured in the network namespace",
                    f"{ip.address} not found in {ctx.request.netns}",
                )


def _valid_id(value, where: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise CNIError(
            INVALID_CONFIG, f"invalid {where}", f"{value!r} must be a container id matching {ID_PATTERN.pattern}"
        )
    return value


def sandbox_result(peers, netns_path: str, skip_driver: str) -> Result:
    """The sandbox's stack as one result: its endpoints' recorded results merged.

    Only interfaces inside the sandbox (host-side peers and bridges are not the
    joiner's); the same interface/address/route reported twice (chained plugins
    pass results on) appears once; interfaces name the joiner's CNI_NETNS.
    """
    merged = Result()
    position: dict[str, int] = {}
    for ep in sorted(peers, key=lambda e: (e.ifname, e.network, e.id)):
        if ep.driver == skip_driver:
            continue  # another joiner: its result is this same merge
        result = recorded_result(ep)
        if result is None:
            continue
        remap: dict[int, int] = {}
        for index, iface in enumerate(result.interfaces):
            if not iface.sandbox:
                continue
            if iface.name not in position:
                position[iface.name] = len(merged.interfaces)
                merged.interfaces.append(iface.model_copy(update={"sandbox": netns_path}))
            remap[index] = position[iface.name]
        for ip in result.ips:
            if ip.interface is not None and ip.interface not in remap:
                continue  # an address on a host-side interface
            entry = ip.model_copy(update={"interface": remap.get(ip.interface) if ip.interface is not None else None})
            if all(entry.address != seen.address for seen in merged.ips):
                merged.ips.append(entry)
        for route in result.routes:
            if route not in merged.routes:
                merged.routes.append(route)
        merged.dns = _merge_dns(merged.dns, result.dns)
    return merged


def _merge_dns(a: DNS, b: DNS) -> DNS:
    def union(x, y):
        return list(x) + [v for v in y if v not in x]

    return DNS(
        nameservers=union(a.nameservers, b.nameservers),
        domain=a.domain or b.domain,
        search=union(a.search, b.search),
        options=union(a.options, b.options),
    )

