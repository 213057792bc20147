"""Shared parts of the real-runtime e2e tests (cnitool, cnmctl, ctr, podman, CRI replay).

Every runtime runs inside a throwaway "host" network namespace made for the test
(`nsenter --net`, mount namespace unchanged), so the bridges, nftables tables and
sysctls our plugins make belong to the test; the runtimes' own state (containerd root,
podman storage, our CNM store, IPAM leases) lives in the test's temp dir. What cannot be
moved (libcni's cache in /var/lib/cni/results for cnitool, ctr and podman) is keyed by
network names unique to the run and removed at the end.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(ROOT, "bin")
CONF = os.path.join(ROOT, "conf")
GO_PLUGINS = "/usr/lib/cni"
TOOLS_BIN = os.environ.get("CNM_TOOLS_DIR") or os.path.join(ROOT, ".tools", "bin")
LIBCNI_RESULTS = "/var/lib/cni/results"
OUR_TYPES = ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-ipam")
_tools_ready = False


def ensure_e2e_tools() -> None:
    """Install what the e2e tests need (Debian packages, cnitool) once per session."""
    global _tools_ready
    if _tools_ready:
        return
    proc = subprocess.run([os.path.join(ROOT, "scripts", "e2e-setup.sh")], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"scripts/e2e-setup.sh failed:\n{proc.stdout}\n{proc.stderr}"
    _tools_ready = True


def sh(*argv: str, ns: str = "", env: dict | None = None, check: bool = True, timeout: float = 90,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (inside netns path `ns` when given); a failure shows its output."""
    cmd = list(argv)
    if ns:
        cmd = ["nsenter", f"--net={ns}", "--"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def base_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(extra)
    return env


def plugin_types(conflist: dict) -> set[str]:
    """Every binary a list needs: plugin types and their IPAM types."""
    found = set()
    for plugin in conflist.get("plugins") or []:
        found.add(plugin.get("type", ""))
        ipam = plugin.get("ipam") or {}
        if ipam.get("type"):
            found.add(ipam["type"])
    return found


def available(ptype: str) -> bool:
    return os.path.exists(os.path.join(BIN, ptype)) or os.path.exists(os.path.join(GO_PLUGINS, ptype))


def shipped_conflists() -> list[str]:
    """conf/**/*.conflist, relative to conf/."""
    paths = glob.glob(os.path.join(CONF, "**", "*.conflist"), recursive=True)
    return sorted(os.path.relpath(p, CONF) for p in paths)


def adapt(conflist: dict, name: str, bridge: str, data_dir: str, version: str | None = None) -> dict:
    """A shipped list made private to a test: its own network name, bridge and IPAM dir."""
    out = copy.deepcopy(conflist)
    out["name"] = name
    if version:
        out["cniVersion"] = version
        out.pop("cniVersions", None)
    for plugin in out.get("plugins") or []:
        if "bridge" in plugin:
            plugin["bridge"] = bridge
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") in ("cnm-ipam", "host-local"):
            ipam["dataDir"] = data_dir
    return out


def bridge_conflist(name: str, bridge: str, subnet: str, data_dir: str, version: str = "1.0.0",
                    capabilities: dict | None = None) -> dict:
    """cnm-bridge + cnm-ipam, the network every runtime test attaches to."""
    plugin = {
        "type": "cnm-bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": True,
        "ipam": {
            "type": "cnm-ipam",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    if capabilities:
        plugin["capabilities"] = capabilities
    return {"cniVersion": version, "name": name, "plugins": [plugin]}


def write_conflist(directory: str, conflist: dict, filename: str | None = None) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename or f"{conflist['name']}.conflist")
    with open(path, "w") as f:
        json.dump(conflist, f, indent=2)
    return path


def http_get_from(ns: str, ip: str, port: int, timeout: float = 3) -> str:
    """GET / from inside netns `ns` ("" on any failure). busybox nc, as Debian has no nc by default;
    bounded by a timeout, since a reserved but unserved port (podman holds its -p ports) never answers."""
    argv = ["nsenter", f"--net={ns}", "--", "busybox", "nc", "-w", "2", ip, str(port)]
    try:
        proc = subprocess.run(argv, input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout.decode(errors="replace")


def wait_for_http(ns: str, ip: str, port: int, expect: str, seconds: float = 8) -> str:
    """Poll GET / until the body contains `expect` or time runs out; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        body = http_get_from(ns, ip, port)
        if expect in body or time.monotonic() > deadline:
            return body
        time.sleep(0.25)


# ---- what is left behind ----------------------------------------------------------------------
def host_links(host_ns: str) -> dict[str, dict]:
    out = sh("ip", "-j", "-d", "link", "show", ns=host_ns).stdout
    return {link["ifname"]: link for link in json.loads(out or "[]")}


def bridge_ports(host_ns: str, bridge: str) -> list[str]:
    return sorted(name for name, link in host_links(host_ns).items() if link.get("master") == bridge)


def store_records(state_dir: str) -> dict[str, list]:
    """Ids of the sandboxes and endpoints in our CNM store."""
    from cni_plugins.cnm.store import Store

    if not os.path.isdir(state_dir):
        return {"sandboxes": [], "endpoints": []}
    with Store(state_dir).transaction(write=False) as tx:
        return {"sandboxes": [s.id for s in tx.list_sandboxes()], "endpoints": [e.id for e in tx.list_endpoints()]}


def leases(data_dir: str, network: str) -> list[str]:
    directory = os.path.join(data_dir, network)
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if n != "lock" and not n.startswith("last_reserved_ip"))


def cache_files(network: str) -> list[str]:
    return sorted(glob.glob(os.path.join(LIBCNI_RESULTS, f"{glob.escape(network)}-*")))


def remove_cache_files(network: str) -> None:
    for path in cache_files(network):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def mounts_under(prefix: str) -> list[str]:
    prefix = prefix.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def unmount_under(prefix: str) -> None:
    """Lazily unmount everything mounted below `prefix`, deepest first (rootfs, netns pins, shm)."""
    for point in sorted(mounts_under(prefix), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def nothing_left(host_ns: str, bridge: str, state_dir: str, data_dir: str, network: str) -> dict:
    """Everything an attachment makes, gathered for one assertion (empty lists = clean)."""
    return {
        "bridge ports": bridge_ports(host_ns, bridge) if host_ns else [],
        "store": store_records(state_dir),
        "leases": leases(data_dir, network),
        "libcni cache": cache_files(network),
    }


CLEAN = {"bridge ports": [], "store": {"sandboxes": [], "endpoints": []}, "leases": [], "libcni cache": []}


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
