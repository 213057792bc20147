"""Simulated nodes for the overlay tests: an underlay bridge in a netns of its own, and per
node a netns plugged into it (eth0, 192.168.<k>.<i>/24), with its own state and run dirs,
its own IPAM data and its own node name. Pods are netns attached through the node's plugin.
Every object is unique and removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess

from support.common import BIN, GO_PLUGINS, PluginRun, exec_plugin, unique


def sh(*argv: str, ns: str = "", check: bool = True) -> subprocess.CompletedProcess:
    cmd = list(argv)
    if ns:
        cmd = ["nsenter", f"--net={ns}", "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


class SimNode:
    """One node. `private`: it also has a mount namespace of its own (a tmpfs on /run and on
    /var/lib/cni, held by a sleeping process): its plugins, cnmd and pods use the default
    paths there (/var/lib/cni/cnm, /run/cnm, /run/cnm/cnmd.sock, /run/netns), as on a machine
    of its own. The test reaches them through /proc/<holder>/root."""

    def __init__(self, world: "World", index: int, tmp, private: bool = False):
        self.world = world
        self.name = f"node{index}"
        self.address = f"{world.underlay_net}.{index + 1}"
        self.host = world.netns("cnmn")
        self.dir = tmp / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.holder = None
        self.wrap = ["nsenter", f"--net={self.host}", "--"]
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_PATH": f"{BIN}:{GO_PLUGINS}",
            "CNM_LOG_FILE": str(self.dir / "cnm-cni.log"),
            "CNM_HELPER_SOCKET": "off",
        }
        if private:
            self.holder = subprocess.Popen(
                self.wrap + ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                             "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/cni && echo ready "
                             "&& exec sleep infinity"], stdout=subprocess.PIPE, text=True)
            assert self.holder.stdout.readline().strip() == "ready"
            self.wrap = ["nsenter", f"--net={self.host}", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]
            self.state_dir = self.outside("/var/lib/cni/cnm")
        else:
            self.env.update(CNM_STATE_DIR=str(self.dir / "state"), CNM_RUN_DIR=str(self.dir / "run"))
            self.state_dir = self.env["CNM_STATE_DIR"]
        port = unique("u")
        sh("ip", "link", "add", port, "netns", world.underlay_ns.rsplit("/", 1)[1], "type", "veth",
           "peer", "name", "eth0", "netns", self.host.rsplit("/", 1)[1])
        sh("ip", "link", "set", port, "master", world.bridge, "up", ns=world.underlay_ns)
        sh("ip", "addr", "add", f"{self.address}/24", "dev", "eth0", ns=self.host)
        sh("ip", "link", "set", "eth0", "up", ns=self.host)
        sh("ip", "link", "set", "lo", "up", ns=self.host)
        self.pods: list[tuple[str, str, str]] = []  # (netns as the test sees it, container id, address)
        self._inside: dict[str, str] = {}  # a pod's netns path as the node sees it

    def outside(self, path: str) -> str:
        """A path of the node's mount namespace, as the test reaches it."""
        return f"/proc/{self.holder.pid}/root{path}" if self.holder is not None else path

    def pod_netns(self) -> tuple[str, str]:
        """A fresh netns for a pod: (path for the test, path for the node's plugins)."""
        if self.holder is None:
            path = self.world.netns("cnmp")
            return path, path
        name = unique("cnmp", 30)
        subprocess.run(self.wrap + ["ip", "netns", "add", name], check=True, capture_output=True)
        return self.outside(f"/run/netns/{name}"), f"/run/netns/{name}"

    def conf(self, **keys) -> dict:
        conf = {"cniVersion": "1.1.0", "name": self.world.network, "type": "cnm-overlay",
                "subnet": self.world.subnet, "nodeName": self.name, "underlayInterface": "eth0",
                "leaseTTL": self.world.ttl, "store": {"endpoints": self.world.endpoints(), "prefix": self.world.prefix}}
        conf.update(self.world.keys)
        conf.update(keys)
        return conf

    def run(self, command: str, conf=None, netns: str = "", cid: str = "", ifname: str = "eth0"):
        """The plugin as the node's runtime runs it (`netns`: as the test sees it)."""
        netns = self._inside.get(netns, netns)
        if self.holder is None:
            return exec_plugin("cnm-overlay", command, conf or self.conf(), self.env, container_id=cid, netns=netns,
                               ifname=ifname if cid else "", host_netns=self.host)
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns,
                   CNI_IFNAME=ifname if cid else "", CNI_ARGS="", CNI_PATH=f"{BIN}:{GO_PLUGINS}")
        proc = subprocess.run(self.wrap + [os.path.join(BIN, "cnm-overlay")], input=json.dumps(conf or self.conf()).encode(),
                              env=env, capture_output=True, timeout=120)
        return PluginRun(proc)

    def add_pod(self, **keys) -> tuple[str, str, str]:
        ns, inside = self.pod_netns()
        self._inside[ns] = inside
        cid = unique("c", 30)
        run = self.run("ADD", self.conf(**keys), ns, cid)
        assert run.rc == 0, run
        address = run.json["ips"][0]["address"].split("/")[0]
        pod = (ns, cid, address)
        self.pods.append(pod)
        return pod

    def new_netns(self) -> str:
        ns, inside = self.pod_netns()
        self._inside[ns] = inside
        return ns

    def del_pod(self, pod, **keys) -> None:
        run = self.run("DEL", self.conf(**keys), pod[0], pod[1])
        assert run.rc == 0, run
        self.pods.remove(pod)

    def state(self) -> dict:
        from cni_plugins.drivers.overlay import state

        return state.read(self.state_dir, self.world.network)

    def routes(self) -> list[dict]:
        return json.loads(sh("ip", "-4", "-j", "route", "show", ns=self.host).stdout or "[]")

    def cleanup(self) -> None:
        try:
            for pod in list(self.pods):
                self.run("DEL", self.conf(), pod[0], pod[1])
        finally:
            stop_helper(self)
            if self.holder is not None:  # its mount namespace, tmpfs and pod netns mounts go with it
                self.holder.kill()
                self.holder.wait()


def underlay_net() -> str:
    """The /24 (first three octets) of this test process's underlays (each in its own netns)."""
    return f"192.168.{100 + os.getpid() % 100}"


class World:
    """An underlay bridge, nodes on it, one overlay network (its name, subnet and etcd prefix
    unique to the test)."""

    def __init__(self, netns_factory, tmp, cluster, ttl: int = 5, subnet: str = "10.250.0.0/16",
                 private: bool = False):
        self.private = private  # each node a mount namespace of its own too
        self.netns = netns_factory
        self.tmp = tmp
        self.cluster = cluster
        self.ttl = ttl
        self.subnet = subnet
        self.network = unique("ovnet", 30)
        self.prefix = f"/{unique('cnmt')}"
        self.underlay_net = underlay_net()
        self.underlay_ns = netns_factory("cnmu")
        self.bridge = "ub"
        sh("ip", "link", "add", self.bridge, "type", "bridge", ns=self.underlay_ns)
        sh("ip", "link", "set", self.bridge, "up", ns=self.underlay_ns)
        sh("ip", "link", "set", "lo", "up", ns=self.underlay_ns)
        # The underlay's own address: a service on the underlay (etcd over TCP) listens there.
        self.service_address = f"{self.underlay_net}.254"
        sh("ip", "addr", "add", f"{self.service_address}/24", "dev", self.bridge, ns=self.underlay_ns)
        self.nodes: list[SimNode] = []
        self.keys: dict = {}  # config keys every node's conf has (e.g. dnsEnabled)

    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    def add_node(self) -> SimNode:
        node = SimNode(self, len(self.nodes), self.tmp, self.private)
        self.nodes.append(node)
        return node

    def cleanup(self) -> None:
        for node in self.nodes:
            try:
                node.cleanup()
            except Exception:
                pass


def ping(ns: str, address: str, size: int | None = None, df: bool = False) -> bool:
    argv = ["ping", "-4", "-c", "1", "-W", "2"]
    if size is not None:
        argv += ["-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return sh(*argv, address, ns=ns, check=False).returncode == 0


SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(20)
print("ready", flush=True)
c, peer = s.accept()
c.sendall(peer[0].encode())
c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(c.recv(100).decode())
"""


def tcp_source(server_ns: str, server_ip: str, client_ns: str, port: int = 5555) -> str:
    """Connect over TCP from `client_ns` to a server in `server_ns`; the source address the
    server saw."""
    import sys

    server = subprocess.Popen(["nsenter", f"--net={server_ns}", "--", sys.executable, "-c", SERVER, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", server.stderr.read()
        out = sh(sys.executable, "-c", CLIENT, server_ip, str(port), ns=client_ns).stdout.strip()
        server.wait(timeout=30)
        return out
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def start_helper(node: SimNode) -> None:
    """The node's own resident helper (cnmd) in its namespaces: it serves the node's plugin
    execs and keeps its overlay lease and mesh."""
    from support.common import wait_listening

    log = open(node.dir / "cnmd.log", "ab")
    env = {k: v for k, v in node.env.items() if k != "CNM_HELPER_SOCKET"}
    if node.holder is None:
        sock = str(node.dir / "cnmd.sock")
        argv = [os.path.join(BIN, "cnmd"), "--socket", sock]
        reach = sock
    else:  # the default socket, in the node's own /run
        sock = "/run/cnm/cnmd.sock"
        argv = [os.path.join(BIN, "cnmd")]
        reach = node.outside(sock)
    node.helper = subprocess.Popen(node.wrap + argv, env=env, stdout=log, stderr=log)
    log.close()
    wait_listening(reach, node.helper, log=str(node.dir / "cnmd.log"))
    if node.holder is None:
        node.env["CNM_HELPER_SOCKET"] = sock
    else:
        node.env.pop("CNM_HELPER_SOCKET", None)  # the thin client finds the default socket


def stop_helper(node: SimNode, kill: bool = False) -> None:
    proc = getattr(node, "helper", None)
    if proc is not None and proc.poll() is None:
        proc.kill() if kill else proc.terminate()
        proc.wait(timeout=30)
    node.env["CNM_HELPER_SOCKET"] = "off"


def helper_log(node: SimNode) -> str:
    try:
        return (node.dir / "cnmd.log").read_text()
    except OSError:
        return ""


def mesh_of(node: SimNode) -> dict[str, str]:
    """subnet -> VTEP IP of the remote nodes the kernel's mesh on `node` holds (route,
    neighbour and FDB entry all present)."""
    from cni_plugins.drivers.overlay.mesh import device_names

    _, vx = device_names(node.world.network)
    routes = json.loads(sh("ip", "-4", "-j", "route", "show", "dev", vx, ns=node.host, check=False).stdout or "[]")
    neigh = json.loads(sh("ip", "-4", "-j", "neigh", "show", "dev", vx, ns=node.host, check=False).stdout or "[]")
    fdb = json.loads(sh("bridge", "-j", "fdb", "show", "dev", vx, ns=node.host, check=False).stdout or "[]")
    macs = {n["dst"]: n.get("lladdr") for n in neigh if "PERMANENT" in n.get("state", [])}
    vteps = {f["mac"]: f.get("dst") for f in fdb if f.get("dst")}
    found = {}
    for r in routes:
        if r.get("gateway") and "onlink" in r.get("flags", []):
            mac = macs.get(r["gateway"])
            if mac and vteps.get(mac):
                found[r["dst"]] = vteps[mac]
    return found


def wait_for(predicate, timeout: float = 30, what: str = "") -> None:
    """Until predicate() is true (polling); fails after `timeout` seconds (generous: no speed
    is asserted here, bench/ measures it)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.05)


def layout_of(world: "World", length: int = 24, prefix: str | None = None):
    """The lease layout of the world's network (its records' keys in etcd)."""
    import ipaddress

    from cni_plugins.drivers.overlay import lease

    return lease.Layout(prefix or world.prefix, world.network, ipaddress.ip_network(world.subnet), length)


def records(world: "World") -> list:
    """The subnet records in etcd, as the nodes parse them."""
    from cni_plugins.drivers.overlay import lease

    found, _, _ = lease.read_all(world.cluster.client(), layout_of(world))
    return found


def leases(world: "World") -> list[int]:
    """Every lease etcd holds (granted and not yet expired or revoked)."""
    answer = world.cluster.client().call("/v3/lease/leases", {})
    return sorted(int(entry["ID"]) for entry in answer.get("leases") or [])


def try_add(node: SimNode, **keys) -> PluginRun:
    """An ADD on `node` that may fail; a pod it made is remembered for the node's cleanup."""
    ns = node.new_netns()
    cid = unique("c", 30)
    run = node.run("ADD", node.conf(**keys), ns, cid)
    if run.rc == 0:
        node.pods.append((ns, cid, run.json["ips"][0]["address"].split("/")[0]))
    return run
