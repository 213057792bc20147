"""The Kubernetes path end to end: pods through containerd 1.6's CRI plugin, as the kubelet asks.

A private containerd (own root, state, socket, config, all under a temp dir) runs in a
throwaway "node" network namespace with a CNI bin dir and conf dir installed as on a
Kubernetes node: our plugins, `loopback` served by cnm-none, Go `bandwidth` chained after
cnm-bridge. The test speaks the CRI gRPC API (runtime.v1) through the project's own client
(tests/e2e/harness/) and asserts on the node's kernel and files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from harness.conflists import load_shipped, random_subnet
from harness.host import LIBCNI_DIR, sh
from harness.image import oci_archive
from harness.kubelet import Kubelet
from harness.node import Node

from support.common import unique

SANDBOX_IMAGE = "registry.test/cnm/pause:e2e"
# Port publishing (hostPort through the portMappings capability) is issue 5's; until it lands the
# host-port assertion alone is an expected failure. Set to False when issue 5 is merged.
HOST_PORT_PENDING = False


def k8s_conflist(name: str, bridge: str, subnet: str, data_dir: str, bandwidth: bool = True, **range_extra) -> dict:
    """conf/containerd/10-cnm.conflist as shipped, made private to this test (network name, bridge,
    pod range, lease dir), with Go `bandwidth` chained after cnm-bridge for the bandwidth capability
    (unless `bandwidth` is False)."""
    conflist = load_shipped("containerd/10-cnm.conflist")
    bridge_conf = conflist["plugins"][0]
    assert bridge_conf["type"] == "cnm-bridge" and bridge_conf["ipam"]["type"] == "cnm-ipam", conflist
    assert bridge_conf["capabilities"].get("portMappings"), "the shipped list must declare portMappings"
    conflist["name"] = name
    bridge_conf["bridge"] = bridge
    bridge_conf["ipam"]["ranges"] = [[{"subnet": subnet, **range_extra}]]
    bridge_conf["ipam"]["dataDir"] = data_dir
    if bandwidth and not any(p["type"] == "bandwidth" for p in conflist["plugins"]):
        conflist["plugins"].append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    return conflist


_kubelets: list[Kubelet] = []  # live nodes, for the failure log


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory):
    return oci_archive(str(tmp_path_factory.mktemp("image") / "pause.tar"), SANDBOX_IMAGE)


@pytest.fixture(scope="module")
def make_node(tmp_path_factory, image_archive):
    """make_node(subnet, bandwidth=True, **range_extra) -> a started Kubelet on its own Node; all are
    torn down at the end of the module."""
    kubelets: list[Kubelet] = []

    def make(subnet: str | None = None, bandwidth: bool = True, **range_extra) -> Kubelet:
        tag = unique("crin")
        node = Node(str(tmp_path_factory.mktemp(tag)), go_plugins=("bandwidth", "host-local"), cache_dir=LIBCNI_DIR)
        node.add_network(k8s_conflist(f"cnm-k8s-{tag}", unique("cnmk"), subnet or random_subnet(200, 250),
                                      node.data_dir, bandwidth, **range_extra), "10-cnm.conflist")
        kube = Kubelet(node, SANDBOX_IMAGE, image_archive)
        kubelets.append(kube)
        _kubelets.append(kube)
        try:
            kube.start()
        except Exception:
            print(kube.containerd.log_tail())
            raise
        return kube

    yield make
    for kube in kubelets:
        _kubelets.remove(kube)
        leftovers = kube.stop()
        assert not leftovers, f"libcni cache entries left behind: {leftovers}"


@pytest.fixture(scope="module")
def kube(make_node):
    return make_node()


@pytest.fixture(autouse=True)
def containerd_log_on_failure(request):
    """A failed test shows the tail of its nodes' containerd logs (CNI errors land there)."""
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for kube in _kubelets:
            print(f"--- containerd log of node {kube.node.netns_name} ---\n{kube.containerd.log_tail(80)}")


def nsexec(netns_path: str, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
    return sh(*argv, ns=netns_path, timeout=timeout, check=check)


def gateway_of(kube: Kubelet) -> str:
    return str(subnet_of(kube).network_address + 1)


def subnet_of(kube: Kubelet):
    return ipaddress.ip_network(kube.network.subnet)


def cache_entry(kube: Kubelet, pod_id: str, ifname: str = "eth0") -> dict:
    with open(os.path.join(LIBCNI_DIR, "results", f"{kube.network.name}-{pod_id}-{ifname}")) as f:
        return json.load(f)


def assert_pods_gone(kube: Kubelet, pods) -> None:
    """Nothing of these (removed) pods is left: veth, lease, nftables entry, netns, store record, cache entry."""
    node = kube.node
    links = node.links()
    for pod in pods:
        assert pod.host_veth, f"no host veth reported for {pod.name}: {pod.info.get('cniResult')}"
        assert pod.host_veth not in links, f"host veth {pod.host_veth} of {pod.name} left behind"
    leftover_links = set(links) - {"lo", kube.network.bridge}
    assert not leftover_links, f"links left in the node: {sorted(leftover_links)}"
    leases = node.leases()
    assert not {p.ip for p in pods} & set(leases), f"leases left: {leases}"
    ruleset = node.nft_ruleset()
    for pod in pods:
        assert f'"{pod.ip}"' not in ruleset, f"nftables still mentions {pod.ip}: {ruleset}"
        assert pod.host_veth not in ruleset, f"nftables still mentions {pod.host_veth}"
        assert not os.path.exists(pod.netns), f"netns {pod.netns} of {pod.name} still exists"
    live = {s.id for s in kube.client.list_pod_sandbox()}
    assert not live & {p.id for p in pods}, "removed pods still listed"
    mounts = kube.netns_mounts()
    assert not [m for m in mounts if any(m == p.netns for p in pods)], f"netns mounts left: {mounts}"
    sandboxes, endpoints = node.store()
    ids = {p.id for p in pods}
    assert not [e for e in endpoints if e.container_id in ids], f"store endpoints left: {endpoints}"
    assert not [s for s in sandboxes if s.netns in {p.netns for p in pods}], f"store sandboxes left: {sandboxes}"
    cached = [path for path in kube.cache_files() if any(p.id in path for p in pods)]
    assert not cached, f"libcni cache entries left: {cached}"


# -- the runtime ---------------------------------------------------------------------------------


def test_version_and_network_ready(kube):
    version = kube.client.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_version.startswith("1.6")
    assert version.runtime_api_version == "v1"
    conditions = kube.client.wait_network_ready()
    assert conditions["RuntimeReady"][0], conditions
    assert conditions["NetworkReady"][0], f"{conditions}\n{kube.containerd.log_tail()}"


# -- two pods: IPs, reachability, host port, DNS, teardown ----------------------------------------


def tcp_server(netns: str, port: int, token: str) -> subprocess.Popen:
    """A one-file TCP server inside a pod's netns that answers every connection with `token` (exits after 60 s)."""
    code = (
        "import socket,sys,time\n"
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {port})); s.listen(8); s.settimeout(1)\n"
        "print('ready', flush=True)\n"
        "end=time.monotonic()+60\n"
        "while time.monotonic()<end:\n"
        "    try: c,_=s.accept()\n"
        "    except socket.timeout: continue\n"
        f"    c.sendall(b'{token}'); c.close()\n"
    )
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    if not ready or proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        pytest.fail(f"the test server in {netns} did not start")
    return proc


def tcp_fetch(netns: str, address: str, port: int) -> str:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{address}', {port}), timeout=3)\n"
        "sys.stdout.write(s.recv(100).decode())\n"
    )
    proc = nsexec(netns, sys.executable, "-c", code, timeout=15)
    return proc.stdout if proc.returncode == 0 else f"<failed: {proc.stderr.strip().splitlines()[-1:]}>"


def test_two_pods_network_host_port_and_teardown(kube):
    host_port = random.randint(30000, 32000)
    spec_a = kube.spec(
        "pod-a",
        ports=[("tcp", 8080, host_port, "")],
        dns_servers=["10.96.0.10"],
        dns_searches=["default.svc.cluster.local", "svc.cluster.local"],
        dns_options=["ndots:5"],
    )
    a = kube.run_pod(spec_a)
    b = kube.run_pod(kube.spec("pod-b"))
    try:
        subnet = subnet_of(kube)
        for pod in (a, b):
            # PodSandboxStatus reports the IP our plugin gave eth0 (containerd reads ips[].interface)
            assert ipaddress.ip_address(pod.ip) in subnet, (pod.name, pod.ip, pod.info.get("cniResult"))
            addrs = json.loads(nsexec(pod.netns, "ip", "-j", "addr", "show", "dev", "eth0", check=True).stdout)
            assert pod.ip in [info["local"] for info in addrs[0]["addr_info"]]
            lo = json.loads(nsexec(pod.netns, "ip", "-j", "link", "show", "dev", "lo", check=True).stdout)[0]
            assert "UP" in lo["flags"], "containerd's loopback network (cnm-none as `loopback`) left lo down"
            assert pod.host_veth in kube.node.links()
            assert kube.node.links()[pod.host_veth].get("master") == kube.network.bridge
        assert a.ip != b.ip
        assert sorted(kube.node.leases()) == sorted([a.ip, b.ip])

        listed = {s.id: s for s in kube.client.list_pod_sandbox({})}
        assert listed[a.id].metadata.name == "pod-a" and listed[b.id].metadata.name == "pod-b"
        assert all(listed[p.id].state == 0 for p in (a, b))  # SANDBOX_READY

        # What containerd sent, as libcni cached it: Go-cased capability args, K8S_* args.
        entry = cache_entry(kube, a.id)
        assert entry["capabilityArgs"]["portMappings"] == [
            {"HostPort": host_port, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}
        ], entry["capabilityArgs"]
        args = dict(map(tuple, entry["cniArgs"]))
        assert args["K8S_POD_NAME"] == "pod-a" and args["K8S_POD_NAMESPACE"] == kube.k8s_namespace
        assert args["K8S_POD_INFRA_CONTAINER_ID"] == a.id and args["IgnoreUnknown"] == "1", args
        # Our store holds both attachments of each pod: eth0 (cnm-bridge) and lo (cnm-none as `loopback`).
        _, endpoints = kube.node.store()
        for pod in (a, b):
            mine = {(e.network, e.ifname, e.driver) for e in endpoints if e.container_id == pod.id}
            assert mine == {(kube.network.name, "eth0", "bridge"), ("cni-loopback", "lo", "null")}, mine
        assert "portMappings" not in cache_entry(kube, b.id).get("capabilityArgs", {})
        # DNS config: in the capability args sent to the plugins, and in the pod's resolv.conf.
        assert entry["capabilityArgs"]["dns"]["Servers"] == ["10.96.0.10"], entry["capabilityArgs"]
        resolv = [m["source"] for m in a.info["runtimeSpec"]["mounts"] if m["destination"] == "/etc/resolv.conf"]
        with open(resolv[0]) as f:
            text = f.read()
        assert "nameserver 10.96.0.10" in text and "search default.svc.cluster.local" in text, text

        # The pods reach each other over the bridge.
        for src, dst in ((a, b), (b, a)):
            ping = nsexec(src.netns, "ping", "-c", "1", "-W", "2", dst.ip)
            assert ping.returncode == 0, f"{src.name} -> {dst.name}: {ping.stdout}{ping.stderr}"

        # A server in pod A answers on its container port from pod B, and on the host port from the kube.
        server = tcp_server(a.netns, 8080, "hello-from-a")
        try:
            assert tcp_fetch(b.netns, a.ip, 8080) == "hello-from-a"
            # from the kube: on its own address (the bridge gateway) and on 127.0.0.1
            host_port_answers = {
                addr: tcp_fetch(kube.node.host, addr, host_port) for addr in (gateway_of(kube), "127.0.0.1")
            }
        finally:
            server.kill()
            server.wait()
    finally:
        for pod in (a, b):
            kube.remove_pod(pod.id)
    assert_pods_gone(kube, [a, b])
    ruleset = kube.node.nft_ruleset()
    assert str(host_port) not in ruleset, f"host port {host_port} still in nftables"
    wrong = {addr: answer for addr, answer in host_port_answers.items() if answer != "hello-from-a"}
    if wrong:
        message = f"host port {host_port} on the kube: {wrong}"
        if HOST_PORT_PENDING:  # only this assertion waits for issue 5; everything above must hold
            pytest.xfail(f"issue 5 (port publishing) has not landed: {message}")
        pytest.fail(message)


# -- the bandwidth capability --------------------------------------------------------------------


def test_bandwidth_annotation_reaches_the_chained_bandwidth_plugin(kube):
    annotations = {"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "20M"}
    pod = kube.run_pod(kube.spec("pod-bw", annotations=annotations))
    try:
        entry = cache_entry(kube, pod.id)
        bandwidth = entry["capabilityArgs"]["bandwidth"]
        assert bandwidth["IngressRate"] == 10_000_000 and bandwidth["EgressRate"] == 20_000_000, bandwidth
        qdiscs = kube.node.qdiscs(pod.host_veth)
        tbf = [q for q in qdiscs if q["kind"] == "tbf"]
        assert tbf, f"no tbf qdisc on {pod.host_veth}: {qdiscs}"
        assert tbf[0]["options"]["rate"] == 10_000_000 // 8, tbf  # tc -j reports bytes/s
        ifbs = [name for name, link in kube.node.links().items() if link.get("linkinfo", {}).get("info_kind") == "ifb"]
        assert ifbs, "egress shaping made no ifb device"
        assert any(q["kind"] == "tbf" for q in kube.node.qdiscs(ifbs[0]))
    finally:
        kube.remove_pod(pod.id)
    assert_pods_gone(kube, [pod])


# -- many pods at once ---------------------------------------------------------------------------


def test_twenty_pods_in_parallel_get_unique_ips(kube):
    names = [f"pod-p{i:02d}" for i in range(20)]
    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(kube.run_pod, kube.spec(name)) for name in names]
        results = [f.exception() or f.result() for f in futures]
    pods = [r for r in results if not isinstance(r, BaseException)]
    try:
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} RunPodSandbox failed: {errors[:3]}\n{kube.containerd.log_tail(30)}"
        ips = [p.ip for p in pods]
        assert len(set(ips)) == 20, sorted(ips)
        assert all(ipaddress.ip_address(ip) in subnet_of(kube) for ip in ips)
        assert sorted(kube.node.leases()) == sorted(ips)
        assert len({p.host_veth for p in pods}) == 20
    finally:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda p: kube.remove_pod(p.id), pods))
    assert_pods_gone(kube, pods)


# -- an exhausted IPAM range ---------------------------------------------------------------------


def test_exhausted_range_fails_run_pod_sandbox_cleanly(make_node):
    subnet = random_subnet(200, 250)
    only = str(ipaddress.ip_network(subnet).network_address + 2)
    kube = make_node(subnet, rangeStart=only, rangeEnd=only)
    first = kube.run_pod(kube.spec("pod-first"))
    assert first.ip == only

    def snapshot():
        sandboxes, endpoints = kube.node.store()
        return {
            "links": sorted(kube.node.links()),
            "leases": kube.node.leases(),
            "nft": kube.node.nft_ruleset(),
            "netns": sorted(kube.netns_mounts()),
            "store": (sorted(s.id for s in sandboxes), sorted(e.id for e in endpoints)),
            "cache": kube.cache_files(),
            "pods": sorted(s.id for s in kube.client.list_pod_sandbox()),
        }

    before = snapshot()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        kube.run_pod(kube.spec("pod-second"))
    assert time.monotonic() - started < 60
    message = failure.value.details()
    assert "no IP addresses available" in message, message
    after = snapshot()
    assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}

    kube.remove_pod(first.id)
    assert_pods_gone(kube, [first])


# -- day-2: `cnmctl gc NETWORK` (issue 17 item 1) -------------------------------------------------


def test_gc_network_keeps_running_pods(make_node):
    """Issue 17 item 1: `cnmctl gc NETWORK` took eth0 from every pod of the network while
    CRI reported them SANDBOX_READY. Pods survive it now: eth0, veth, lease, host port.
    The shipped list as is (no `bandwidth` after cnm-bridge, whose DEL would fail first)."""
    kube = make_node(bandwidth=False)
    host_port = random.randint(32001, 32767)
    a = kube.run_pod(kube.spec("pod-gc-a", ports=[("tcp", 8080, host_port, "")]))
    b = kube.run_pod(kube.spec("pod-gc-b"))
    try:
        before = {p.id: nsexec(p.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout for p in (a, b)}
        assert a.ip in before[a.id] and b.ip in before[b.id], before
        proc = kube.node.cnmctl("gc", kube.network.name, check=False)
        after = {p.id: nsexec(p.netns, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout for p in (a, b)}
        assert after == before, proc  # the kernel first: what the finding broke
        assert proc.returncode == 0, proc
        links = kube.node.links()
        assert all(links.get(p.host_veth, {}).get("master") == kube.network.bridge for p in (a, b)), sorted(links)
        assert sorted(kube.node.leases()) == sorted([a.ip, b.ip])
        assert nsexec(b.netns, "ping", "-c", "1", "-W", "2", a.ip).returncode == 0
        server = tcp_server(a.netns, 8080, "still-here")
        try:
            assert tcp_fetch(kube.node.host, gateway_of(kube), host_port) == "still-here"
        finally:
            server.kill()
            server.wait()
        listed = {s.id: s for s in kube.client.list_pod_sandbox({})}
        assert all(listed[p.id].state == 0 for p in (a, b))  # SANDBOX_READY, and really so
        assert [r.split()[0] for r in proc.stdout.splitlines()[1:]] == ["kept", "kept"], proc.stdout
    finally:
        for pod in (a, b):
            kube.remove_pod(pod.id)
    assert_pods_gone(kube, [a, b])
