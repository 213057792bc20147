"""cnmctl: run networks against network namespaces, as cnitool and `docker run` do.

  cnmctl add|check|del|status NETWORK [NETNS]      exactly cnitool's behaviour
  cnmctl gc NETWORK [--dry-run|--all]              DEL cached attachments whose netns is gone (netgc.py)
  cnmctl gc [--format table|json]                  node-wide reconcile of store and kernel (nodegc.py)
  cnmctl run NAME --network NET [--publish H:C[/proto]] [--join OTHER]
  cnmctl rm NAME
  cnmctl network ls|inspect, sandbox ls|inspect, endpoint ls, doctor   operator views (ops.py)

Options may come before or after a command's positionals, as in docker's CLI.

Environment (as cnitool): NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CNI_ARGS
(K=V;...), CAP_ARGS (JSON object of capability args), CNI_IFNAME (default eth0).
CNI_CACHE_DIR moves libcni's result cache (default /var/lib/cni).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import sys
from typing import Any, Sequence

from ..cni.request import ID_PATTERN
from ..runtime import conf as confmod
from ..runtime.errors import RunnerError
from ..runtime.libcni import CNIRunner, RuntimeConf, cache_dir_from_env
from . import netnsconf

DEFAULT_NETCONFPATH = "/etc/cni/net.d"
NETNS_DIR = "/run/netns"
# `--join` without --network: a built-in list holding just the container-mode plugin.
JOIN_NETWORK = {"cniVersion": "1.1.0", "name": "container", "plugins": [{"type": "cnm-container"}]}


class UsageError(Exception):
    """Bad arguments or environment: usage on stderr, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with docker's (pflag's) order: a command's options may come before, between
    or after its positionals (`cnmctl network inspect a --format json b`)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        # Only a command without subcommands parses intermixed (argparse cannot with them);
        # the intermixed parse itself calls back here, for argparse's own two passes.
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def error(self, message: str):  # argparse's own: usage + message on stderr, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---- environment, as cnitool reads it ------------------------------------------------------
def parse_cni_args(raw: str) -> list[tuple[str, str]]:
    """cnitool's parseArgs: K=V pairs separated by ';', neither side empty."""
    pairs = []
    for item in raw.split(";"):
        kv = item.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise UsageError(f"invalid CNI_ARGS pair {item!r}")
        pairs.append((kv[0], kv[1]))
    return pairs


def env_runtime(netns: str, container_id: str | None = None) -> RuntimeConf:
    env = os.environ
    caps: dict[str, Any] = {}
    if env.get("CAP_ARGS"):
        try:
            caps = json.loads(env["CAP_ARGS"])
        except ValueError as exc:
            raise UsageError(f"invalid CAP_ARGS: {exc}") from None
        if not isinstance(caps, dict):
            raise UsageError("invalid CAP_ARGS: must be a JSON object")
    args = parse_cni_args(env["CNI_ARGS"]) if env.get("CNI_ARGS") else []
    ifname = env.get("CNI_IFNAME", "eth0")
    if container_id is None:
        container_id = cnitool_container_id(netns) if netns else ""
    return RuntimeConf(container_id, netns, ifname, args, caps)


def cnitool_container_id(netns: str) -> str:
    """cnitool's ID: "cnitool-" + hex of the first 10 bytes of SHA-512 of the absolute netns path."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns).encode()).digest()[:10].hex()


def runner() -> CNIRunner:
    paths = [p for p in os.environ.get("CNI_PATH", "").split(os.pathsep) if p]
    return CNIRunner(paths, cache_dir_from_env())


def conf_dir() -> str:
    return os.environ.get("NETCONFPATH") or DEFAULT_NETCONFPATH


def print_result(result: dict) -> None:
    # Go's PrettyPrint: 4-space indentation.
    sys.stdout.write(json.dumps(result, indent=4) + "\n")
    sys.stdout.flush()


# ---- cnitool commands ----------------------------------------------------------------------
def cmd_cnitool(opts) -> int:
    if opts.command == "gc" and not opts.network:  # node-wide reconcile
        if opts.all or opts.dry_run:
            raise UsageError("--all and --dry-run need NETWORK")
        from . import nodegc

        return nodegc.run(opts)
    netns = opts.netns
    if opts.command in ("add", "check", "del") and not netns:
        raise UsageError(f"{opts.command} needs NETNS")
    rt = env_runtime(os.path.abspath(netns) if netns else "")
    net = confmod.load_conflist(conf_dir(), opts.network)
    run = runner()
    if opts.command == "add":
        print_result(run.add_network_list(net, rt))
    elif opts.command == "check":
        run.check_network_list(net, rt)
    elif opts.command == "del":
        run.del_network_list(net, rt)
    elif opts.command == "gc":  # only attachments whose netns is gone; --all: cnitool's GC
        from . import netgc

        if opts.all and opts.dry_run:
            raise UsageError("--all and --dry-run exclude each other")

        return netgc.run(opts, net, run)
    else:
        run.get_status_network_list(net)
    return 0


# ---- run / rm ------------------------------------------------------------------------------
def parse_publish(spec: str) -> dict[str, Any]:
    """[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO] -> a portMappings entry (podman's lowercase keys)."""
    body, _, proto = spec.partition("/")
    proto = (proto or "tcp").lower()
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, host, container = "", *parts
    elif len(parts) == 3:
        host_ip, host, container = parts
        host_ip = host_ip.strip("[]")
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise UsageError(f"invalid --publish {spec!r}: {host_ip!r} is not an IP address") from None
    else:
        raise UsageError(f"invalid --publish {spec!r}: use [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]")
    if proto not in ("tcp", "udp", "sctp"):
        raise UsageError(f"invalid --publish {spec!r}: protocol must be tcp, udp or sctp")
    try:
        host_port, container_port = int(host), int(container)
    except ValueError:
        raise UsageError(f"invalid --publish {spec!r}: ports must be numbers") from None
    if not (0 < host_port < 65536 and 0 < container_port < 65536):
        raise UsageError(f"invalid --publish {spec!r}: ports must be 1-65535")
    entry: dict[str, Any] = {"hostPort": host_port, "containerPort": container_port, "protocol": proto}
    if host_ip:
        entry["hostIP"] = host_ip
    return entry


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def check_name(name: str) -> None:
    if not ID_PATTERN.fullmatch(name) or len(name) > 200:
        raise UsageError(f"invalid name {name!r}: must match {ID_PATTERN.pattern}")


def joined_netns(run: CNIRunner, other: str) -> str:
    """The netns of container `other`: its cached attachment's, else /run/netns/OTHER."""
    for att in run.get_cached_attachments(other):
        if att.netns and os.path.exists(att.netns):
            return att.netns
    path = netns_path(other)
    if os.path.exists(path):
        return path
    raise RunnerError(f"container {other!r} is not running (no cached attachment, no {path})")


def cmd_run(opts) -> int:
    from ..linux import netns as nsmod

    check_name(opts.name)
    if opts.join:
        check_name(opts.join)
    if not opts.network and not opts.join:
        raise UsageError("run needs --network NET (or --join OTHER)")
    path = netns_path(opts.name)
    if os.path.exists(path):
        raise RunnerError(f"{path} already exists: `cnmctl rm {opts.name}` first")
    rt = env_runtime(path, container_id=opts.name)
    # NAME is the sandbox's name on DNS-enabled networks (kubelet-style IgnoreUnknown: a
    # delegated plugin that knows no CNM_NAME ignores it).
    rt.args = [(k, v) for k, v in rt.args if k not in ("CNM_NAME", "IgnoreUnknown")] + [
        ("IgnoreUnknown", "1"), ("CNM_NAME", opts.name)]
    publish = [parse_publish(p) for p in opts.publish]
    run = runner()
    if opts.network:
        net = confmod.load_conflist(conf_dir(), opts.network)
    else:
        net = confmod.conflist_from_bytes(json.dumps(JOIN_NETWORK).encode())
    if publish:
        rt.capability_args["portMappings"] = publish
        if not any((p.get("capabilities") or {}).get("portMappings") for p in net.plugins):
            sys.stderr.write(f"cnmctl: warning: network {net.name!r} declares no portMappings capability\n")
    if opts.join:
        rt.args = [(k, v) for k, v in rt.args if k != "CNM_CONTAINER"] + [("CNM_CONTAINER", opts.join)]
        source = joined_netns(run, opts.join)
        fd = nsmod.open_netns(source)
        try:
            nsmod.pin(fd, path)  # our own name for the shared stack
        finally:
            os.close(fd)
    else:
        nsmod.create_named(opts.name)
    try:
        if not opts.join:
            _loopback_up(path)
        result = run.add_network_list(net, rt)
    except BaseException:
        # As a runtime does after a failed ADD: DEL (idempotent), then drop the namespace.
        try:
            run.del_network_list(net, rt)
        except RunnerError as err:
            sys.stderr.write(f"cnmctl: cleanup after failed ADD: {err}\n")
        nsmod.remove_named(path)
        raise
    try:
        netnsconf.write(opts.name, result)
    except OSError as exc:  # the sandbox works; only `ip netns exec` resolves without it
        sys.stderr.write(f"cnmctl: warning: {netnsconf.path_of(opts.name)} not written: {exc.strerror}\n")
    print_result(result)
    return 0


def _loopback_up(path: str) -> None:
    """Runtimes bring `lo` up themselves (podman, CRI-O); so does `docker run`."""
    from ..linux import links
    from ..linux import netns as nsmod

    fd = nsmod.open_netns(path)
    try:
        with links.rtnl(fd) as ipr:
            links.set_up(ipr, "lo")
    finally:
        os.close(fd)


def cmd_rm(opts) -> int:
    from ..linux import netns as nsmod

    check_name(opts.name)
    run = runner()
    path = netns_path(opts.name)
    attachments = run.get_cached_attachments(opts.name)
    if not attachments and not os.path.exists(path):
        raise RunnerError(f"no container {opts.name!r} (no cached attachment, no {path})")
    errors = []
    for att in reversed(attachments):
        try:
            net = _network_of(att)
            rt = RuntimeConf(att.container_id, att.netns, att.ifname, list(att.cni_args), dict(att.capability_args))
            run.del_network_list(net, rt)
        except RunnerError as err:
            errors.append(f"{att.network}/{att.ifname}: {err}")
    if errors:
        raise RunnerError("; ".join(errors) + f" ({path} kept for a retry)")
    nsmod.remove_named(path)
    netnsconf.remove(opts.name)
    return 0


def _network_of(att) -> confmod.NetworkConfigList:
    """The list cached at ADD (CRI-O's and podman's teardown), else the one on disk now."""
    try:
        net = confmod.conflist_from_bytes(att.config)
        if net.plugins and net.name == att.network:
            return net
    except RunnerError:
        pass
    return confmod.load_conflist(conf_dir(), att.network)


# ---- argument parsing ----------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(
        prog="cnmctl",
        description="Run CNI networks against network namespaces (like cnitool), or run named "
        "network namespaces like containers (like docker run).",
        epilog="Environment: NETCONFPATH (default /etc/cni/net.d), CNI_PATH, CNI_ARGS (K=V;...), "
        "CAP_ARGS (JSON), CNI_IFNAME (default eth0), CNI_CACHE_DIR (default /var/lib/cni).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    helps = {
        "add": "ADD the network to NETNS and print the result",
        "check": "CHECK the network in NETNS against the cached result",
        "del": "DEL the network from NETNS",
        "gc": "GC the network: DEL its cached attachments whose network namespace is gone (running "
              "containers are never touched; --all: every one, as cnitool); without NETWORK: reconcile "
              "the whole node's CNM store with the kernel (stale records, leftover veths, pins and "
              "nftables elements)",
        "status": "ask every plugin of the network whether it can ADD (STATUS)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text + ("." if name == "gc" else " (cnitool's behaviour)."))
        p.add_argument("network", metavar="NETWORK", nargs="?" if name == "gc" else None,
                       help="network name (looked up in NETCONFPATH)")
        if name == "gc":
            p.add_argument("--format", choices=("table", "json"), default="table",
                           help="what was removed (and kept, with NETWORK), as a table or JSON")
            p.add_argument("--dry-run", action="store_true",
                           help="with NETWORK: only report what would be DELed")
            p.add_argument("--all", action="store_true",
                           help="with NETWORK: cnitool's GC, DEL every cached attachment of the network, "
                                "running containers included")
        p.add_argument(
            "netns",
            metavar="NETNS",
            nargs=None if name in ("add", "check", "del") else "?",
            help="path of the network namespace; the container ID is derived from it as cnitool does",
        )
        p.set_defaults(func=cmd_cnitool)
    p = sub.add_parser(
        "run",
        help="create network namespace /run/netns/NAME and attach it (docker run for networks)",
        description="Create /run/netns/NAME and ADD a network to it; the container ID is NAME.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--network", "-n", metavar="NET", help="network name in NETCONFPATH")
    p.add_argument(
        "--publish", "-p", metavar="[HOSTIP:]HOST:CONTAINER[/PROTO]", action="append", default=[],
        help="publish a port (portMappings capability); repeatable",
    )
    p.add_argument(
        "--join", metavar="OTHER",
        help="share the network namespace of container OTHER (cnm-container, CNI_ARGS CNM_CONTAINER=OTHER)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("rm", help="DEL every network of NAME and remove /run/netns/NAME",
                       description="DEL every cached attachment of container NAME, then remove its namespace.")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("daemon", help="run cnmd, the warm resident helper, in the foreground",
                       description="Serve plugin execs over a root-only unix socket until SIGTERM (see cnmd --help).")
    p.add_argument("--socket", help="listening socket (default $CNM_HELPER_SOCKET or /run/cnm/cnmd.sock)")
    p.set_defaults(func=cmd_daemon)
    from . import ops  # operator views: network/sandbox/endpoint ls|inspect, doctor

    ops.add_parsers(sub, Parser)
    return parser


def cmd_daemon(opts) -> int:
    from . import cnmd

    return cnmd.main(["--socket", opts.socket] if opts.socket else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not getattr(opts, "func", None):
        parser.print_usage(sys.stderr)
        sys.stderr.write("cnmctl: error: a command is required\n")
        return 2
    try:
        return opts.func(opts)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"cnmctl: error: {err}\n")
        return 2
    except (RunnerError, OSError) as err:
        sys.stderr.write(f"cnmctl: {err}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
