"""Kubernetes pods on a cnm-overlay network across two nodes (issue 16 item 7): two simulated
nodes, each with its own containerd 1.6 driven over CRI and its own cnmd, joined by an underlay
link; the shipped overlay list (conf/overlay.conflist, made private: a throwaway etcd on a unix
socket as its store, the underlay link, a node name each). One pod per node: they reach each
other; removing them leaves no record, pin, lease or libcni cache entry."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from harness.conflists import adapt, load_shipped
from harness.host import BIN, LIBCNI_DIR, sh
from harness.image import oci_archive
from harness.kubelet import Kubelet
from harness.node import CLEAN, Node

from support.common import unique, wait_listening
from support.etcd import Cluster

SANDBOX_IMAGE = "registry.test/cnm/pause:e2e"


def start_cnmd(node: Node) -> subprocess.Popen:
    """The node's helper in its netns, with its store: it keeps the overlay's lease and mesh
    (containerd runs the plugins in-process: the helper finds the network by its scan)."""
    sock = os.path.join(node.work, "cnmd.sock")
    log = open(os.path.join(node.work, "cnmd.log"), "ab")
    proc = subprocess.Popen(["nsenter", f"--net={node.host}", "--", os.path.join(BIN, "cnmd"), "--socket", sock],
                            env=node.env(), stdout=log, stderr=log)
    log.close()
    wait_listening(sock, proc, log=os.path.join(node.work, "cnmd.log"))
    return proc


@pytest.fixture
def kubes(tmp_path):
    archive = oci_archive(str(tmp_path / "pause.tar"), SANDBOX_IMAGE)
    cluster = Cluster(1).start()
    network, prefix = unique("cnm-ov", 30), f"/{unique('cnmt')}"
    kubes, helpers = [], []
    try:
        nodes = [Node(str(tmp_path / f"node{i}"), cache_dir=LIBCNI_DIR) for i in range(2)]
        a, b = unique("ula"), unique("ulb")
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", nodes[1].netns_name, ns=nodes[0].host)
        for node, link, address in ((nodes[0], a, "192.0.2.1/24"), (nodes[1], b, "192.0.2.2/24")):
            sh("ip", "addr", "add", address, "dev", link, ns=node.host)
            sh("ip", "link", "set", link, "up", ns=node.host)
            conflist = adapt(load_shipped("overlay.conflist"), network, "", node.data_dir)
            conflist["plugins"][0].update(store={"endpoints": cluster.endpoints, "prefix": prefix},
                                          underlayInterface=link, nodeName=node.netns_name)
            node.add_network(conflist, "10-cnm.conflist")
            helpers.append(start_cnmd(node))
            kube = Kubelet(node, SANDBOX_IMAGE, archive)
            kubes.append(kube)
            try:
                kube.start()
            except Exception:
                print(kube.containerd.log_tail())
                raise
        yield kubes
    finally:
        for proc in helpers:
            proc.terminate()
            proc.wait(timeout=30)
        leftovers = []
        for kube in kubes:
            leftovers += kube.stop()
        cluster.stop()
    assert not leftovers, f"libcni cache entries left behind: {leftovers}"


def routed(node: Node, address: str) -> bool:
    """The node's kernel routes `address` into the overlay (its VXLAN device). Until the mesh
    has the other node's route the node has none at all (no default route): unreachable."""
    proc = sh("ip", "-j", "route", "get", address, ns=node.host, check=False)
    if proc.returncode != 0:
        return False
    out = json.loads(proc.stdout or "[]")
    return bool(out) and out[0].get("dev", "").startswith("cnmvx")


def test_pods_on_two_nodes_reach_each_other(kubes):
    import time

    a = kubes[0].run_pod(kubes[0].spec("ov-a"))
    b = kubes[1].run_pod(kubes[1].spec("ov-b"))
    assert a.ip.rsplit(".", 1)[0] != b.ip.rsplit(".", 1)[0]  # each node its own subnet
    deadline = time.monotonic() + 30  # the helpers' scan finds the network (every 2 s)
    while not (routed(kubes[0].node, b.ip) and routed(kubes[1].node, a.ip)):
        assert time.monotonic() < deadline, "the nodes never routed to each other's pods"
        time.sleep(0.1)
    for pod, other in ((a, b.ip), (b, a.ip)):
        assert sh("ping", "-c", "1", "-W", "3", other, ns=pod.netns, check=False).returncode == 0, (pod, other)
    kubes[0].remove_pod(a.id)
    kubes[1].remove_pod(b.id)
    for kube in kubes:  # (the machine's libcni cache is shared, and so is the network's name)
        assert kube.node.leftovers() == CLEAN
        ipam = os.path.join(kube.node.state_dir, "overlay", "ipam")
        assert [f for _, _, files in os.walk(ipam) for f in files
                if f != "lock" and not f.startswith("last_reserved_ip")] == []
