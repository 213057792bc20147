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
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness.conflists import adapt, load_shipped, random_subnet
from harness.host import sh
from harness.node import CLEAN, Node

from cni_plugins.runtime import cache as cachemod
from cni_plugins.runtime.conf import conflist_from_bytes
from cni_plugins.runtime.libcni import CNIRunner, RuntimeConf
from support.common import unique

LOOPBACK_LIST = {"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
ANNOTATIONS = {"io.kubernetes.cri.pod-annotations": {
    "kubernetes.io/config.source": "api",
    "example.com/owner": "e2e",
}}


class Cri:
    """What containerd's CRI plugin holds for a node: its networks in load order and a libcni runner
    that execs the node's plugins in the node's netns."""

    def __init__(self, node: Node, netns_factory, version: str):
        self.node = node
        self.netns = netns_factory
        # what this containerd's libcni selects from the shipped list
        conflist = adapt(load_shipped("containerd/10-cnm.conflist"), unique("cnmcri", 30), unique("cnr"),
                         node.data_dir, version=version, subnet=random_subnet())
        self.network = node.add_network(conflist)
        self.subnet = ipaddress.ip_network(self.network.subnet)
        self.eth0_list = conflist_from_bytes(json.dumps(conflist).encode())
        self.lo_list = conflist_from_bytes(json.dumps(LOOPBACK_LIST).encode())
        # go-cni loads the loopback network first, then the conf dir's list.
        self.networks = [(self.lo_list, "lo"), (self.eth0_list, "eth0")]
        self.runner = CNIRunner([node.bin_dir], node.cache_dir, env=node.env(),
                                wrapper=("nsenter", f"--net={node.host}", "--"))

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


class Pod:
    """One pod sandbox as containerd's CRI plugin drives it."""

    def __init__(self, cri: Cri, name: str, ports: bool = True, dns: bool = True):
        self.cri = cri
        self.name = name
        self.id = secrets.token_hex(32)
        self.netns = cri.netns("cni-")
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
                           self.cri.pod_args(self.name, self.id), dict(self.caps))

    def run(self) -> str:
        """RunPodSandbox: lo and eth0 ADDed concurrently; the pod IP from the eth0 interface."""
        with ThreadPoolExecutor(2) as pool:
            futures = {ifname: pool.submit(self.cri.runner.add_network_list, net, self.rt(ifname))
                       for net, ifname in self.cri.networks}
            self.results = {ifname: f.result() for ifname, f in futures.items()}
        return pod_ip(self.results["eth0"])

    def stop(self, netns_gone: bool = False) -> None:
        """StopPodSandbox: DEL in load order with the cached result; then the netns goes."""
        if netns_gone:
            sh("ip", "netns", "del", os.path.basename(self.netns))
        for net, ifname in self.cri.networks:
            self.cri.runner.del_network_list(net, self.rt(ifname, "" if netns_gone else self.netns))
        if not netns_gone:
            sh("ip", "netns", "del", os.path.basename(self.netns))

    def remove(self) -> None:
        """RemovePodSandbox: DEL again, CNI_NETNS empty, nothing cached any more."""
        for net, ifname in self.cri.networks:
            assert cachemod.read(self.cri.node.cache_dir, net.name, self.id, ifname) is None
            self.cri.runner.del_network_list(net, self.rt(ifname, ""))


def pod_ip(result: dict) -> str:
    """go-cni: the IPs whose interface index names `eth0` (IPs without an index count as eth0's)."""
    interfaces = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        index = ip.get("interface")
        if index is None or interfaces[index]["name"] == "eth0":
            return str(ipaddress.ip_interface(ip["address"]).ip)
    raise AssertionError(f"no IP on eth0 in {result}")


@pytest.fixture(params=["1.0.0", "1.1.0"])
def cri(request, netns, tmp_path):
    node = Node(tmp_path)
    yield Cri(node, netns, request.param)
    node.cleanup()


@pytest.mark.parametrize("netns_gone", [False, True], ids=["stop-with-netns", "stop-after-netns-gone"])
def test_pod_lifecycle_as_containerd_cri_sends_it(cri, netns_gone):
    pod = Pod(cri, "web")
    ip = pod.run()
    assert ipaddress.ip_address(ip) in cri.subnet
    eth0 = next(i for i in pod.results["eth0"]["interfaces"] if i["name"] == "eth0")
    assert eth0["sandbox"] == pod.netns and eth0.get("mac")
    lo = pod.results["lo"]
    assert lo["cniVersion"] == "0.3.1" and lo["interfaces"][0]["name"] == "lo"
    # The kernel agrees: lo up, eth0 with the pod IP, the gateway reachable.
    links = json.loads(sh("ip", "-j", "addr", "show", ns=pod.netns).stdout)
    by_name = {link["ifname"]: link for link in links}
    assert "UP" in by_name["lo"]["flags"]
    assert ip in [a["local"] for a in by_name["eth0"]["addr_info"]]
    gateway = str(next(cri.subnet.hosts()))
    sh("ping", "-c", "1", "-W", "3", gateway, ns=pod.netns)
    # The cache holds what libcni records: args (any order), Go-cased capability args.
    cached = cachemod.read(cri.node.cache_dir, cri.network.name, pod.id, "eth0")
    assert dict(cached.cni_args)["K8S_POD_NAME"] == "web"
    assert cached.capability_args["portMappings"][0]["HostPort"] == pod.caps["portMappings"][0]["HostPort"]
    assert cached.netns == pod.netns
    if cri.eth0_list.cni_version == "1.1.0":
        for net, _ in cri.networks:  # go-cni Status(): STATUS on every network (>= 1.1.0 only)
            cri.runner.get_status_network_list(net)
    pod.stop(netns_gone=netns_gone)
    assert cri.node.leftovers() == CLEAN
    pod.remove()
    assert cri.node.leftovers() == CLEAN


def test_pods_with_and_without_ports_side_by_side(cri):
    """Three pods set up at the same time (lo + eth0 each): unique IPs, each torn down cleanly."""
    pods = [Pod(cri, f"p{i}", ports=i != 1, dns=i != 2) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        ips = list(pool.map(Pod.run, pods))
    assert len(set(ips)) == 3
    assert all(ipaddress.ip_address(ip) in cri.subnet for ip in ips)
    assert len(cri.node.bridge_ports(cri.network.bridge)) == 3
    # The pods reach each other over the bridge.
    sh("ping", "-c", "1", "-W", "3", ips[1], ns=pods[0].netns)
    sh("ping", "-c", "1", "-W", "3", ips[0], ns=pods[2].netns)
    for pod in pods:
        pod.stop()
        pod.remove()
    assert cri.node.leftovers() == CLEAN
