"""`cnmctl doctor`: is this node able to run our plugins, and is its state clean?

Each check yields Findings: ok, warning (works, but something an operator should know)
or error (something is broken; doctor exits 1). Every non-ok finding says how to fix it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import asdict, dataclass
from typing import Iterator

from ..cni import log as cnilog
from ..cnm.store import DB_NAME
from ..runtime import conf as confmod
from ..runtime.errors import RunnerError
from ..runtime.libcni import CNIRunner
from . import inspect as views

DEFAULT_CNI_PATH = "/opt/cni/bin"  # libcni's default when CNI_PATH is unset
VERSION_TIMEOUT_S = 30


@dataclass
class Finding:
    check: str
    severity: str  # ok | warning | error
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


# ---- kernel and tools -------------------------------------------------------------------------
def check_nft() -> Iterator[Finding]:
    path = shutil.which("nft")
    if path is None:
        yield Finding("nft", "error", "nft is not installed (cnm-bridge programs NAT, ports and isolation with it)",
                      "apt-get install nftables (or your distribution's nftables package)")
        return
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
        failure = proc.stderr.strip() if proc.returncode != 0 else ""
    except (OSError, subprocess.SubprocessError) as exc:
        failure = str(exc)
    if failure:
        yield Finding("nft", "error", f"{path} --version failed: {failure}",
                      "reinstall nftables; check that the nf_tables kernel module loads (modprobe nf_tables)")
        return
    yield ok("nft", f"{path}: {proc.stdout.strip()}")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def check_forwarding(endpoints_by_family: dict[str, int]) -> Iterator[Finding]:
    """Forwarding per family. cnm-bridge with isGateway turns it on at ADD, so off is only
    wrong while bridge endpoints of that family exist: someone turned it off since, and
    those containers cannot reach beyond their bridge."""
    for key, label in (("net/ipv4/ip_forward", "IPv4"), ("net/ipv6/conf/all/forwarding", "IPv6")):
        value = _read("/proc/sys/" + key)
        dotted = key.replace("/", ".")
        if value is None:
            continue
        attached = endpoints_by_family.get(label, 0)
        if value == "1":
            yield ok("forwarding", f"{label} forwarding is on ({dotted}=1)")
        elif not attached:
            yield ok("forwarding", f"{label} forwarding is off ({dotted}={value}); no {label} bridge endpoint "
                                   f"needs it (an ADD with isGateway turns it on)")
        else:
            yield Finding("forwarding", "error",
                          f"{label} forwarding is off ({dotted}={value}) while {attached} {label} bridge "
                          f"endpoint(s) are attached: they cannot reach beyond their bridge",
                          f"sysctl -w {dotted}=1 and persist it in /etc/sysctl.d/ (cnm-bridge sets it at ADD; "
                          f"something turned it off since)")


def check_conntrack(udp_endpoints: int) -> Iterator[Finding]:
    """UDP published ports have their conntrack entries flushed at ADD and DEL (through
    ctnetlink, no tool needed); best effort, so a node where that cannot work only warns."""
    from ..linux.conntrack import available

    problem = available()
    if problem is None:
        yield ok("conntrack", "the conntrack table can be flushed (ctnetlink)")
    elif not udp_endpoints:
        yield ok("conntrack", f"the conntrack table cannot be read ({problem}); no endpoint publishes a UDP port")
    else:
        yield Finding("conntrack", "warning",
                      f"{udp_endpoints} endpoint(s) publish UDP ports but the conntrack table cannot be read "
                      f"({problem}): a UDP flow that began before a port was published (or outlives its "
                      f"container) keeps going to the old place until it stays idle for 30-180 s",
                      "run cnmctl doctor as root in the host network namespace; load nf_conntrack_netlink "
                      "(modprobe nf_conntrack_netlink)")


def check_br_netfilter() -> Iterator[Finding]:
    if not os.path.isdir("/proc/sys/net/bridge"):
        yield Finding("br_netfilter", "warning",
                      "br_netfilter is not loaded: bridged traffic between containers bypasses iptables/nftables "
                      "ip hooks (kube-proxy Services between pods on one bridge need it)",
                      "modprobe br_netfilter; echo br_netfilter > /etc/modules-load.d/br_netfilter.conf")
        return
    value = _read("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if value is not None and value != "1":
        yield Finding("br_netfilter", "warning",
                      f"br_netfilter is loaded but net.bridge.bridge-nf-call-iptables={value}",
                      "sysctl -w net.bridge.bridge-nf-call-iptables=1 (and ip6tables) if kube-proxy serves pods "
                      "on this bridge; persist it in /etc/sysctl.d/")
        return
    yield ok("br_netfilter", "br_netfilter is loaded")


BRIDGE_PORTS_WARN = 0.9  # of the kernel's 1023 ports per bridge


def check_bridge_ports(bridges: list[str]) -> Iterator[Finding]:
    """Every bridge of our networks: how many of the kernel's 1023 ports it uses (a full
    bridge refuses every further ADD). Warns from 90%."""
    from ..linux import links
    from ..linux.veth import BRIDGE_MAX_PORTS

    limit = BRIDGE_MAX_PORTS
    try:
        counts = {}
        with links.rtnl() as ipr:
            for name in bridges:
                index = links.link_index(ipr, name)
                if index is not None:  # (else made by the network's next ADD)
                    counts[name] = len(ipr.iproute.get_links(master=index))
    except Exception as exc:  # not root, no netlink: a finding, not a traceback
        yield Finding("bridge", "warning", f"bridge ports not counted: {type(exc).__name__}: {exc}",
                      "run cnmctl doctor as root in the host network namespace")
        return
    for name, used in counts.items():
        if used < BRIDGE_PORTS_WARN * limit:
            yield ok("bridge", f"bridge {name} has {used} of {limit} ports")
            continue
        left = "no further container can join it" if used >= limit else f"{limit - used} left"
        yield Finding("bridge", "warning", f"bridge {name} has {used} of the {limit} ports a Linux bridge can hold: "
                      f"{left}", "put further containers on another network (another bridge); `cnmctl gc` removes "
                                 "leftover ports of containers that are gone")


def check_driver_health(state_dir: str) -> Iterator[Finding]:
    """Each driver's word on its networks in use (Driver.health: a macvlan master down...)."""
    from .. import drivers

    try:
        snap = views.snapshot(state_dir)
    except RunnerError:
        return
    for net in snap.networks:
        endpoints = [ep for ep in snap.endpoints if ep.network == net.name]
        if not endpoints or net.driver not in drivers.DRIVERS:
            continue
        problems = drivers.load(net.driver).health(net, endpoints)
        for problem in problems:
            yield Finding("network", "error", problem,
                          "bring the link up (ip link set DEV up) or restore it; the endpoints need it to carry traffic")
        if not problems:
            yield ok("network", f"network {net.name} ({net.driver}): nothing its driver checks is wrong")


def bridges_in_use(state_dir: str) -> list[str]:
    try:
        snap = views.snapshot(state_dir)
    except RunnerError:
        return []
    return sorted({ep.data.get("bridge") for ep in snap.endpoints if ep.driver == "bridge" and ep.data.get("bridge")})


# ---- state directory and log ------------------------------------------------------------------
def check_state_dir(directory: str) -> Iterator[Finding]:
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        yield ok("state", f"state directory {directory} does not exist yet (the first ADD creates it 0700)")
        return
    except OSError as exc:
        yield Finding("state", "error", f"cannot stat state directory {directory}: {exc.strerror}",
                      f"check the path and its parents; CNM_STATE_DIR or the config key stateDir name it")
        return
    problems = []
    if not stat.S_ISDIR(st.st_mode):
        yield Finding("state", "error", f"{directory} is not a directory", f"move it away; the first ADD recreates it")
        return
    if st.st_uid != 0:
        problems.append(Finding("state", "error", f"state directory {directory} is owned by uid {st.st_uid}, not root",
                                f"chown root:root {directory}"))
    if st.st_mode & 0o077:
        problems.append(Finding("state", "error",
                                f"state directory {directory} is mode {stat.S_IMODE(st.st_mode):04o}: others can "
                                f"read or change the node's network state", f"chmod 0700 {directory}"))
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        path = os.path.join(directory, name)
        try:
            fst = os.stat(path)
        except OSError:
            continue
        if fst.st_mode & 0o077:
            problems.append(Finding("state", "error", f"{path} is mode {stat.S_IMODE(fst.st_mode):04o}",
                                    f"chmod 0600 {path}"))
    try:
        views.snapshot(directory)
    except RunnerError as err:
        problems.append(Finding("state", "error", f"the store cannot be read: {err}",
                                f"restore {os.path.join(directory, DB_NAME)} from a backup, or move it away "
                                f"(then DEL/GC cannot release what it recorded)"))
    yield from problems or [ok("state", f"state directory {directory} is root-only and the store reads")]


def check_log(env=None) -> Iterator[Finding]:
    env = os.environ if env is None else env
    path, _ = cnilog.settings(env, None)
    directory = os.path.dirname(path) or "."
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK):
        yield Finding("log", "warning", f"plugin log {path} is not writable: commands work, but nothing is logged",
                      f"make {target} writable for root, or set CNM_LOG_FILE / the config key logFile")
        return
    yield ok("log", f"plugins log to {path}")


# ---- network configurations -------------------------------------------------------------------
def check_configs(conf_dir: str, env=None) -> Iterator[Finding]:
    env = os.environ if env is None else env
    try:
        files = confmod.conf_files(conf_dir, confmod.LIST_EXTENSIONS + confmod.LEGACY_EXTENSIONS)
    except RunnerError as err:
        yield Finding("config", "error", str(err), f"make {conf_dir} readable (NETCONFPATH names another directory)")
        return
    if not files:
        yield Finding("config", "warning", f"no network configuration in {conf_dir}",
                      f"install one (see docs/operators.md), or point NETCONFPATH at the right directory")
        return
    paths = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p] or [DEFAULT_CNI_PATH]
    runner = CNIRunner(paths, timeout=VERSION_TIMEOUT_S)  # a hanging plugin is a finding, not a hung doctor
    names: dict[str, str] = {}
    answers: dict[str, list[str] | str] = {}  # plugin type -> its versions, or why VERSION failed
    for path in files:
        try:
            net = confmod.load_any(path)
            if not net.name:
                raise RunnerError("no network name")
            if not net.plugins:
                raise RunnerError("no plugins")
        except (RunnerError, ValueError, KeyError, TypeError) as err:
            yield Finding("config", "error", f"{path} does not parse: {err}",
                          f"fix the JSON in {path} (cniVersion, name, plugins[].type) or remove the file")
            continue
        if net.name in names:
            yield Finding("config", "warning", f"{path} repeats network name {net.name!r} of {names[net.name]}; "
                                               f"runtimes use the first file", f"rename or remove one of them")
            continue
        names[net.name] = path
        version = net.cni_version or "0.1.0"
        bad = False
        for plugin_type in net.types:
            if plugin_type not in answers:
                try:
                    answers[plugin_type] = runner.get_version_info(plugin_type)
                except RunnerError as err:
                    answers[plugin_type] = str(err)
            answer = answers[plugin_type]
            if isinstance(answer, str):
                bad = True
                yield Finding("config", "error", f"{path}: plugin {plugin_type!r} does not answer VERSION: {answer}",
                              f"install {plugin_type} in one of {os.pathsep.join(paths)} (CNI_PATH), or fix its "
                              f"type in {path}")
            elif version not in answer:
                bad = True
                yield Finding("config", "error",
                              f"{path}: plugin {plugin_type!r} does not support cniVersion {version} "
                              f"(it supports {', '.join(answer)})",
                              f"set cniVersion in {path} to one it supports, or upgrade {plugin_type}")
        if not bad:
            yield ok("config", f"{path}: network {net.name!r} ({', '.join(net.types)}) cniVersion {version}")


# ---- stale state ------------------------------------------------------------------------------
def check_stale(state_dir: str) -> Iterator[Finding]:
    try:
        items = stale_state(state_dir)
    except RunnerError as err:
        yield Finding("stale", "warning", f"stale state not checked: {err}", "see the state finding")
        return
    except Exception as exc:  # netlink, nft or a lease directory failing: a finding, not a traceback
        yield Finding("stale", "warning", f"stale state not checked: {type(exc).__name__}: {exc}",
                      "run cnmctl doctor as root in the host network namespace")
        return
    removable = [i for i in items if i.removable]
    for item in removable:
        if item.restores:
            yield Finding("stale", "error", f"lost {item.kind} {item.name}: {item.why}",
                          "`cnmctl gc` puts it back from the store (so does the resident helper by itself, "
                          "and the next ADD or DEL when the table itself is gone)")
            continue
        yield Finding("stale", "error", f"stale {item.kind} {item.name}: {item.why}",
                      "`cnmctl gc` removes it (node-wide reconcile); or DEL the attachment through the runtime")
    for item in items:
        if item.kind == "unknown":
            yield Finding("stale", "warning", f"sandbox {item.name}: {item.why}",
                          "kept by `cnmctl gc`; see docs/operators.md (what gc removes and never touches)")
        elif not item.removable:
            yield ok("stale", f"{item.kind} {item.name}: {item.why}")
    if not removable:
        yield ok("stale", "no stale sandboxes, endpoints, pins, veths or nftables elements; no nftables "
                          "element or rule of a live endpoint missing")


def stale_state(state_dir: str):
    """What `cnmctl gc` would do (reconcile.plan), as findings."""
    from . import stale

    return stale.scan(state_dir)


# ---- the resident helper ----------------------------------------------------------------------
CNM_TYPES = ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-ipam")


def installed_build(paths: list[str]) -> tuple[str, str] | None:
    """(build id, cnmd path) of the cnm plugins a runtime finds first on `paths` (CNI_PATH),
    as the cnmd beside them prints it; None when there are none or it does not answer."""
    for directory in paths:
        for name in CNM_TYPES:
            plugin = os.path.join(directory, name)
            if not os.path.exists(plugin):
                continue
            cnmd = os.path.join(os.path.dirname(os.path.realpath(plugin)), "cnmd")
            stable = os.path.join(directory, "cnm-cni", "cnmd")  # as install.sh lays it out: what to tell people
            if os.path.realpath(stable) == os.path.realpath(cnmd):
                cnmd = stable
            try:
                proc = subprocess.run([cnmd, "--print-build-id"], capture_output=True, text=True,
                                      timeout=VERSION_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError):
                return None
            build = proc.stdout.strip()
            return (build, cnmd) if proc.returncode == 0 and build else None
    return None


def check_helper(env=None) -> Iterator[Finding]:
    """The helper on the plugins' socket serves the installed plugins' build (a helper of another
    build refuses every exec: they all run in-process, ~10x slower)."""
    from . import handover, thin

    env = os.environ if env is None else env
    path = env.get(thin.SOCKET_ENV, thin.DEFAULT_SOCKET)
    if path in thin.DISABLED:
        yield ok("helper", f"{thin.SOCKET_ENV}={path!r}: plugins run in-process, without a helper")
        return
    paths = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p] or [DEFAULT_CNI_PATH]
    installed = installed_build(paths)
    build, cnmd = installed if installed else (thin.build_id(), "cnmctl daemon")
    whose = f"the plugins in {os.pathsep.join(paths)}" if installed else "this cnmctl"
    try:
        listener = handover.probe(path, build)
    except OSError as exc:
        yield Finding("helper", "warning", f"the helper socket {path} does not accept connections: {exc}",
                      "check the helper's log (journalctl -u cnmd.service when systemd runs it)")
        return
    if listener is None:
        if os.path.lexists(path):
            yield Finding("helper", "warning", f"{path} is left by a helper that is gone; plugins run in-process",
                          f"start the helper ({cnmd}; it replaces the file), or remove {path}")
        else:
            yield ok("helper", f"no helper listens on {path}: plugins run in-process (start one for speed: "
                               f"{cnmd}, or install.sh --systemd)")
        return
    if not listener.answered:
        yield Finding("helper", "warning", f"the helper {listener.describe()} on {path} did not answer in "
                                           f"{handover.ANSWER_TIMEOUT:.0f} s", "check its log; restart it if it hangs")
    elif listener.other_build:
        yield Finding("helper", "error",
                      f"stale helper {listener.describe()} on {path} runs build {listener.build}, not the build of "
                      f"{whose} ({build}): it refuses their execs and every command runs in-process (~10x slower)",
                      f"start the installed helper, which replaces it: {cnmd} (systemctl restart cnmd.service when "
                      f"systemd runs it); or kill -TERM {listener.pid} (it drains and exits)")
    elif listener.refuses_context:
        yield Finding("helper", "error",
                      f"the helper {listener.describe()} on {path} refuses callers like this one "
                      f"({context_difference(listener.pid)}): every exec of a runtime that runs where this "
                      f"cnmctl runs is refused and runs in-process (~10x slower)",
                      f"start the helper where the runtime runs (the node's namespaces, as root, unconfined): "
                      f"{cnmd} replaces it (systemctl restart cnmd.service when systemd runs it); "
                      f"or kill -TERM {listener.pid} (it drains and exits)")
    elif listener.reason.startswith("probe") or listener.reason == "descriptors missing":
        yield ok("helper", f"the helper {listener.describe()} on {path} serves the build of {whose}")
    else:
        yield Finding("helper", "warning", f"the helper {listener.describe()} on {path} refuses callers like "
                                           f"this one: {listener.reason}",
                      "run the runtime, the helper and cnmctl in the same mount, pid and user namespaces, as root")


def context_difference(pid: int) -> str:
    """What differs between process `pid`'s context and ours, as the helper compares them."""
    from . import peer

    try:
        theirs, _ = peer.context_of(pid)
        ours, _ = peer.context_of(os.getpid())
    except OSError:
        return "its context differs from this process's"
    differs = [key for key in theirs if theirs[key] != ours.get(key)]
    return f"its {', '.join(differs)} differ from this process's" if differs else "its context differs"


# ---- all --------------------------------------------------------------------------------------
def run_checks(state_dir: str, conf_dir: str) -> list[Finding]:
    findings: list[Finding] = []
    findings += check_nft()
    findings += check_forwarding(bridge_endpoints_by_family(state_dir))
    findings += check_br_netfilter()
    findings += check_conntrack(udp_publishing_endpoints(state_dir))
    findings += check_bridge_ports(bridges_in_use(state_dir))
    findings += check_driver_health(state_dir)
    findings += check_state_dir(state_dir)
    findings += check_log()
    findings += check_configs(conf_dir)
    findings += check_stale(state_dir)
    findings += check_helper()
    findings += check_overlay(state_dir)
    findings += check_names(state_dir)
    return findings


def check_overlay(state_dir: str) -> Iterator[Finding]:
    """Each overlay network of this node: etcd reachable, its lease there, the VXLAN device and
    MTUs consistent, the kernel's mesh as etcd says (drivers/overlay/view.py)."""
    from ..drivers.overlay import view

    try:
        found = view.problems(state_dir)
    except Exception as exc:  # noqa: BLE001 -- reported
        yield Finding("overlay", "warning", f"overlay not checked: {type(exc).__name__}: {exc}", "")
        return
    for severity, network, message, fix in found:
        yield Finding("overlay", severity, f"{network}: {message}", fix)


def check_names(state_dir: str) -> Iterator[Finding]:
    """A DNS-enabled network whose name server is not running (cli/dnsdoctor.py)."""
    from .dnsdoctor import problems

    for severity, message, fix in problems(state_dir):
        yield Finding("dns", severity, message, fix)


def bridge_endpoints_by_family(state_dir: str) -> dict[str, int]:
    counts = {"IPv4": 0, "IPv6": 0}
    try:
        snap = views.snapshot(state_dir)
    except RunnerError:
        return counts
    for ep in snap.endpoints:
        if ep.driver != "bridge":
            continue
        for address in views.endpoint_view(ep)["IPs"]:
            counts["IPv6" if ":" in address else "IPv4"] += 1
    return counts


def udp_publishing_endpoints(state_dir: str) -> int:
    """Bridge endpoints whose recorded nft elements publish a UDP port."""
    try:
        snap = views.snapshot(state_dir)
    except RunnerError:
        return 0
    count = 0
    for ep in snap.endpoints:
        for entry in ep.data.get("nft") or ():
            key = entry[2] if len(entry) > 2 else None
            if str(entry[1]).startswith("ports") and isinstance(key, dict) and key.get("concat", [""])[0] == "udp":
                count += 1
                break
    return count


MARK = {"ok": "ok", "warning": "WARN", "error": "FAIL"}


def report(findings: list[Finding], verbose: bool = False) -> str:
    lines = []
    for f in findings:
        if f.severity == "ok" and not verbose:
            continue
        lines.append(f"[{MARK[f.severity]:<4}] {f.check}: {f.message}")
        if f.fix:
            lines.append(f"       fix: {f.fix}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    passed = sum(f.severity == "ok" for f in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s), {passed} check(s) passed")
    return "\n".join(lines) + "\n"
