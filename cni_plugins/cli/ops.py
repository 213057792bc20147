"""The operator commands of cnmctl: network/sandbox/endpoint ls|inspect and doctor.

Exit codes: 0 ok, 1 not found or something wrong (doctor), 2 usage (argparse).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..cnm.store import state_dir as default_state_dir
from . import inspect as views
from .table import emit_json, render

DEFAULT_NETCONFPATH = "/etc/cni/net.d"
STORE_HELP = "CNM state directory (default: $CNM_STATE_DIR, else /var/lib/cni/cnm)"


def state_dir_of(opts) -> str:
    return opts.state_dir or default_state_dir(None)


def conf_dir() -> str:
    return os.environ.get("NETCONFPATH") or DEFAULT_NETCONFPATH


def _not_found(err: Exception) -> int:
    sys.stderr.write(f"cnmctl: {err}\n")
    return 1


# ---- network --------------------------------------------------------------------------------
def cmd_network_ls(opts) -> int:
    snap = views.snapshot(state_dir_of(opts))
    configured = views.configured_networks(conf_dir())
    nets = [views.network_view(n, snap, configured) for n in views.network_names(snap, configured)]
    if opts.format == "json":
        emit_json(nets)
        return 0
    rows = []
    for n in nets:
        subnets = [c["Subnet"] for c in n["IPAM"]["Config"]]
        options = [f"{k}={v}" for k, v in sorted(n["Options"].items())]
        rows.append([n["Name"], n["Driver"], options, subnets, len(n["Endpoints"]), n["ConfigFile"]])
    sys.stdout.write(render(["name", "driver", "options", "subnets", "endpoints", "config"], rows))
    return 0


def cmd_network_inspect(opts) -> int:
    snap = views.snapshot(state_dir_of(opts))
    configured = views.configured_networks(conf_dir())
    found, code = [], 0
    for name in opts.names:  # as docker: print what exists, fail on what does not
        try:
            view = views.network_view(name, snap, configured)
        except views.NotFound as err:
            code = _not_found(err)
            continue
        if view["Driver"] == "overlay":  # every node's lease, and whether this node's kernel agrees
            from ..drivers.overlay import view as overlay

            view["Overlay"] = overlay.report(state_dir_of(opts), name)
        found.append(view)
    emit_json(found)
    return code


# ---- sandbox --------------------------------------------------------------------------------
def cmd_sandbox_ls(opts) -> int:
    snap = views.snapshot(state_dir_of(opts))
    boxes = [views.sandbox_view(sb, snap) for sb in snap.sandboxes]
    if opts.format == "json":
        emit_json(boxes)
        return 0
    rows = [[b["Id"], b["State"], b["Members"], len(b["Endpoints"]), b["Netns"], b["Pin"]] for b in boxes]
    sys.stdout.write(render(["sandbox", "state", "members", "endpoints", "netns", "pin"], rows))
    return 0


def cmd_sandbox_inspect(opts) -> int:
    snap = views.snapshot(state_dir_of(opts))
    found, code = [], 0
    for key in opts.ids:
        try:
            found.append(views.sandbox_view(views.find_sandbox(key, snap), snap))
        except views.NotFound as err:
            code = _not_found(err)
    emit_json(found)
    return code


# ---- endpoint -------------------------------------------------------------------------------
def cmd_endpoint_ls(opts) -> int:
    snap = views.snapshot(state_dir_of(opts))
    eps = [views.endpoint_view(e) for e in snap.endpoints
           if (opts.network is None or e.network == opts.network)
           and (opts.container is None or e.container_id == opts.container)]
    if opts.format == "json":
        emit_json(eps)
        return 0
    rows = [[e["EndpointID"][:12], e["Network"], e["ContainerID"], e["IfName"], e["Driver"],
             _endpoint_state(e), e["IPs"], e["MacAddress"], _endpoint_link(e), e["Sandbox"]]
            for e in eps]
    sys.stdout.write(render(["endpoint", "network", "container", "ifname", "driver", "state", "ips", "mac",
                             "host link", "sandbox"], rows))
    return 0


# ---- doctor ---------------------------------------------------------------------------------
def cmd_doctor(opts) -> int:
    from . import doctor

    findings = doctor.run_checks(state_dir_of(opts), conf_dir())
    if opts.format == "json":
        emit_json([f.as_dict() for f in findings])
    else:
        sys.stdout.write(doctor.report(findings, verbose=opts.verbose))
    return 1 if any(f.severity == "error" for f in findings) else 0


# ---- argument parsing -----------------------------------------------------------------------
def add_parsers(sub, parser_class) -> None:
    """Register network, sandbox, endpoint and doctor under cnmctl's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR", help=STORE_HELP)
    listing = argparse.ArgumentParser(add_help=False, parents=[common])
    listing.add_argument("--format", "-f", choices=("table", "json"), default="table",
                         help="aligned table for people (default) or JSON for scripts")
    inspecting = argparse.ArgumentParser(add_help=False, parents=[common])
    inspecting.add_argument("--format", "-f", choices=("json",), default="json",
                            help="JSON, the only format of inspect (accepted as docker's `--format json`)")

    def group(name: str, text: str):
        p = sub.add_parser(name, help=text, description=text)
        inner = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class)
        p.set_defaults(func=lambda opts, p=p: _missing_action(p))
        return inner

    net = group("network", "list and inspect CNM networks (the store and NETCONFPATH)")
    p = net.add_parser("ls", parents=[listing], help="list networks",
                       description="List the networks of the store and of NETCONFPATH.")
    p.set_defaults(func=cmd_network_ls)
    p = net.add_parser("inspect", parents=[inspecting], help="show networks as JSON (like docker network inspect)",
                       description="Driver, subnets and gateways, options, config file and endpoints "
                                   "(container, ifname, MAC, IPs, published ports) of each NAME, as JSON.")
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(func=cmd_network_inspect)

    sbx = group("sandbox", "list and inspect sandboxes (network namespaces and their members)")
    p = sbx.add_parser("ls", parents=[listing], help="list sandboxes",
                       description="List sandboxes: state (ready/gone/host), members, netns and our pin.")
    p.set_defaults(func=cmd_sandbox_ls)
    p = sbx.add_parser("inspect", parents=[inspecting], help="show sandboxes as JSON",
                       description="Show each sandbox (by sandbox id or member container id) as JSON.")
    p.add_argument("ids", metavar="ID", nargs="+", help="sandbox id or container id")
    p.set_defaults(func=cmd_sandbox_inspect)

    ept = group("endpoint", "list endpoints (one per network, container and ifname)")
    p = ept.add_parser("ls", parents=[listing], help="list endpoints",
                       description="List endpoints with their IPs, MAC, host veth and sandbox.")
    p.add_argument("--network", metavar="NET", help="only endpoints of network NET")
    p.add_argument("--container", metavar="ID", help="only endpoints of container ID")
    p.set_defaults(func=cmd_endpoint_ls)

    p = sub.add_parser("doctor", parents=[listing], help="diagnose the node; exit 1 when something is wrong",
                       description="Check nft, IP forwarding, br_netfilter, the state directory, every network "
                                   "configuration in NETCONFPATH (parses; every plugin answers VERSION with the "
                                   "config's version), stale state (what `cnmctl gc` would remove) and the resident "
                                   "helper (a helper of another build than the installed plugins). Each "
                                   "finding says how to fix it. Exit 0 when nothing is wrong, 1 otherwise.")
    p.add_argument("--verbose", "-v", action="store_true", help="also list the checks that passed")
    p.set_defaults(func=cmd_doctor)


def _missing_action(parser) -> int:
    parser.print_usage(sys.stderr)
    sys.stderr.write(f"{parser.prog}: error: an action is required\n")
    return 2


def _endpoint_link(view: dict) -> str:
    """What the endpoint hangs off on the host: its host veth, or its macvlan master and mode."""
    if view.get("Master"):
        return f"{view['Master']} ({view['Mode']})"
    return view["HostVeth"]


def _endpoint_state(view: dict) -> str:
    """active or kept; adding/deleting while a command is at it (or after one died at it)."""
    if view.get("Phase", "ready") != "ready":
        return view["Phase"]
    return "active" if view["Active"] else "kept"
