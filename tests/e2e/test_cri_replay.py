"""A replay of what containerd's CRI plugin (go-cni over libcni) sends for a pod (cni-spec.md §4.3).

RunPodSandbox: containerd makes the netns (/var/run/netns/cni-<random>), then ADDs its
own `cni-loopback` list (cniVersion 0.3.1, ifname lo, binary `loopback`) and the first
conflist of the conf dir (ifname eth0) at the same time. CNI_ARGS carry IgnoreUnknown and
the K8S_* keys in map (so: varying) order; capability args come with Go field names
(HostPort, Servers, ...), the pod annotations always, portMappings only when a port has a
hostPort. The pod IP is the eth0 interface's, found through ips[].interface.
StopPodSandbox: DEL of every network in load order with the netns path (or "" when the
netns is already gone) and the cached result; then the netns is removed.
RemovePodSandbox: a second DEL with an empty CNI_NETNS and no cache left.

The replay runs through cni_plugins.runtime (libcni's semantics, cache included) with
the plugins exec'd through a node-style bin dir inside a throwaway host netns.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import unique  # noqa: E402
from runtimes import (  # noqa: E402
    BIN, CONF, OUR_TYPES, adapt, base_env, bridge_ports, leases, mounts_under, sh, store_records,
)

from cni_plugins.runtime import cache as cachemod  # noqa: E402
from cni_plugins.runtime.conf import conflist_from_bytes  # noqa: E402
from cni_plugins.runtime.libcni import CNIRunner, RuntimeConf  # noqa: E402

SHIPPED = os.path.join(CONF, "containerd", "10-cnm.conflist")
LOOPBACK_LIST = {"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
ANNOTATIONS = {"io.kubernetes.cri.pod-annotations": {
    "kubernetes.io/config.source": "api",
    "example.com/owner": "e2e",
}}


class Node:
    def __init__(self, netns_factory, tmp_path, version: str):
        self.netns = netns_factory
        self.host = netns_factory("cnmh")
        sh("ip", "link", "set", "lo", "up", ns=self.host)
        self.bin_dir = str(tmp_path / "opt-cni-bin")
        os.makedirs(self.bin_dir)
        for name in OUR_TYPES:
            os.symlink(os.path.join(BIN, name), os.path.join(self.bin_dir, name))
        os.symlink(os.path.join(BIN, "cnm-none"), os.path.join(self.bin_dir, "loopback"))
        self.state = str(tmp_path / "cnm-state")
        self.run_dir = str(tmp_path / "cnm-run")
        self.data = str(tmp_path / "ipam")
        self.cache_dir = str(tmp_path / "var-lib-cni")
        with open(SHIPPED) as f:
            shipped = json.load(f)
        self.bridge = unique("cnr")
        conflist = adapt(shipped, unique("cnmcri", 30), self.bridge, self.data)
        conflist["cniVersion"] = version  # what this containerd's libcni selects from the shipped list
        conflist.pop("cniVersions", None)
        self.subnet = ipaddress.ip_network(f"10.{random.randint(100, 199)}.{random.randint(0, 255)}.0/24")
        conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": str(self.subnet)}]]
        self.network = conflist["name"]
        self.eth0_list = conflist_from_bytes(json.dumps(conflist).encode())
        self.lo_list = conflist_from_bytes(json.dumps(LOOPBACK_LIST).encode())
        # go-cni loads the loopback network first, then the conf dir's list.
        self.networks = [(self.lo_list, "lo"), (self.eth0_list, "eth0")]
        self.runner = CNIRunner(
            [self.bin_dir], self.cache_dir,
            env=base_env(CNM_STATE_DIR=self.state, CNM_RUN_DIR=self.run_dir),
            wrapper=("nsenter", f"--net={self.host}", "--"),
        )

    def pod_args(self, name: str, sandbox_id: str) -> list[tuple[str, str]]:
        """The CNI_ARGS go-cni builds from a Go map: same keys, any order."""
        args = [
            ("K8S_POD_NAMESPACE", "e2e"),
            ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id),
            ("K8S_POD_UID", secrets.token_hex(8)),
            ("IgnoreUnknown", "1"),
        ]
        random.shuffle(args)
        return args

    def leftovers(self) -> dict:
        results = os.path.join(self.cache_dir, "results")
        return {
            "bridge ports": bridge_ports(self.host, self.bridge),
            "store": store_records(self.state),
            "leases": leases(self.data, self.network),
            "libcni cache": sorted(os.listdir(results)) if os.path.isdir(results) else [],
            "pins": mounts_under(self.run_dir),
        }


CLEAN = {"bridge ports": [], "store": {"sandboxes": [], "endpoints": []}, "leases": [], "libcni cache": [],
         "pins": []}


class Pod:
    """One pod sandbox as containerd's CRI plugin drives it."""

    def __init__(self, node: Node, name: str, ports: bool = True, dns: bool = True):
        self.node = node
        self.name = name
        self.id = secrets.token_hex(32)
        self.netns = node.netns("cni-")
        caps = dict(ANNOTATIONS)
        if ports:
            caps["portMappings"] = [{"HostPort": random.randint(20000, 29999), "ContainerPort": 80,
                                     "Protocol": "tcp", "HostIP": ""}]
        if dns:
            caps["dns"] = {"Servers": ["10.96.0.10"], "Searches": ["e2e.svc.cluster.local"], "Options": ["ndots:5"]}
        self.caps = caps
        self.results: dict[str, dict] = {}

    def rt(self, ifname: str, netns: str | None = None) -> RuntimeConf:
        # Each network gets its own map iteration, so its own argument order.
        return RuntimeConf(self.id, self.netns if netns is None else netns, ifname,
                           self.node.pod_args(self.name, self.id), dict(self.caps))

    def run(self) -> str:
        """RunPodSandbox: lo and eth0 ADDed concurrently; the pod IP from the eth0 interface."""
        with ThreadPoolExecutor(2) as pool:
            futures = {ifname: pool.submit(self.node.runner.add_network_list, net, self.rt(ifname))
                       for net, ifname in self.node.networks}
            self.results = {ifname: f.result() for ifname, f in futures.items()}
        return pod_ip(self.results["eth0"])

    def stop(self, netns_gone: bool = False) -> None:
        """StopPodSandbox: DEL in load order with the cached result; then the netns goes."""
        if netns_gone:
            sh("ip", "netns", "del", os.path.basename(self.netns))
        for net, ifname in self.node.networks:
            self.node.runner.del_network_list(net, self.rt(ifname, "" if netns_gone else self.netns))
        if not netns_gone:
            sh("ip", "netns", "del", os.path.basename(self.netns))

    def remove(self) -> None:
        """RemovePodSandbox: DEL again, CNI_NETNS empty, nothing cached any more."""
        for net, ifname in self.node.networks:
            assert cachemod.read(self.node.cache_dir, net.name, self.id, ifname) is None
            self.node.runner.del_network_list(net, self.rt(ifname, ""))


def pod_ip(result: dict) -> str:
    """go-cni: the IPs whose interface index names `eth0` (IPs without an index count as eth0's)."""
    interfaces = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        if index is None or interfaces[index]["name"] == "eth0":
            return str(ipaddress.ip_interface(ip["address"]).ip)
    raise AssertionError(f"no IP on eth0 in {result}")


@pytest.fixture(params=["1.0.0", "1.1.0"])
def node(request, netns, tmp_path):
    n = Node(netns, tmp_path, request.param)
    yield n
    for pin in mounts_under(n.run_dir):
        subprocess.run(["umount", "-l", pin], capture_output=True)


@pytest.mark.parametrize("netns_gone", [False, True], ids=["stop-with-netns", "stop-after-netns-gone"])
def test_pod_lifecycle_as_containerd_cri_sends_it(node, netns_gone):
    pod = Pod(node, "web")
    ip = pod.run()
    assert ipaddress.ip_address(ip) in node.subnet
    eth0 = next(i for i in pod.results["eth0"]["interfaces"] if i["name"] == "eth0")
    assert eth0["sandbox"] == pod.netns and eth0.get("mac")
    lo = pod.results["lo"]
    assert lo["cniVersion"] == "0.3.1" and lo["interfaces"][0]["name"] == "lo"
    # The kernel agrees: lo up, eth0 with the pod IP, the gateway reachable.
    links = json.loads(sh("ip", "-j", "addr", "show", ns=pod.netns).stdout)
    by_name = {link["ifname"]: link for link in links}
    assert "UP" in by_name["lo"]["flags"]
    assert ip in [a["local"] for a in by_name["eth0"]["addr_info"]]
    gateway = str(next(node.subnet.hosts()))
    sh("ping", "-c", "1", "-W", "3", gateway, ns=pod.netns)
    # The cache holds what libcni records: args (any order), Go-cased capability args.
    cached = cachemod.read(node.cache_dir, node.network, pod.id, "eth0")
    assert dict(cached.cni_args)["K8S_POD_NAME"] == "web"
    assert cached.capability_args["portMappings"][0]["HostPort"] == pod.caps["portMappings"][0]["HostPort"]
    assert cached.netns == pod.netns
    if node.eth0_list.cni_version == "1.1.0":
        for net, _ in node.networks:  # go-cni Status(): STATUS on every network (>= 1.1.0 only)
            node.runner.get_status_network_list(net)
    pod.stop(netns_gone=netns_gone)
    assert node.leftovers() == CLEAN
    pod.remove()
    assert node.leftovers() == CLEAN


def test_pods_with_and_without_ports_side_by_side(node):
    """Three pods set up at the same time (lo + eth0 each): unique IPs, each torn down cleanly."""
    pods = [Pod(node, f"p{i}", ports=i != 1, dns=i != 2) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        ips = list(pool.map(Pod.run, pods))
    assert len(set(ips)) == 3
    assert all(ipaddress.ip_address(ip) in node.subnet for ip in ips)
    assert len(bridge_ports(node.host, node.bridge)) == 3
    # The pods reach each other over the bridge.
    sh("ping", "-c", "1", "-W", "3", ips[1], ns=pods[0].netns)
    sh("ping", "-c", "1", "-W", "3", ips[0], ns=pods[2].netns)
    for pod in pods:
        pod.stop()
        pod.remove()
    assert node.leftovers() == CLEAN
