"""Kubernetes pods on a cnm-macvlan network (issue 15 item 5): containerd 1.6's CRI plugin
runs pods on the shipped macvlan list (conf/macvlan.conflist, made private), on a node whose
"physical" uplink leads to a LAN netns holding a peer. Pods reach each other and the peer;
removing them leaves no macvlan, lease, record, pin or libcni cache entry."""

from __future__ import annotations

import json

import pytest
from harness.conflists import adapt, load_shipped
from harness.host import LIBCNI_DIR, sh
from harness.image import oci_archive
from harness.kubelet import Kubelet
from harness.node import CLEAN, Node

from conftest import unique

SANDBOX_IMAGE = "registry.test/cnm/pause:e2e"
PEER = "192.168.1.1"


@pytest.fixture
def kube(tmp_path, netns):
    archive = oci_archive(str(tmp_path / "pause.tar"), SANDBOX_IMAGE)
    node = Node(str(tmp_path / "node"), cache_dir=LIBCNI_DIR)
    lan = netns("cnml")
    master = node.add_uplink(lan, f"{PEER}/24")
    node.add_network(adapt(load_shipped("macvlan.conflist"), unique("cnm-mv", 30), "", node.data_dir,
                           master=master), "10-cnm.conflist")
    k = Kubelet(node, SANDBOX_IMAGE, archive)
    k.lan = lan
    try:
        k.start()
    except Exception:
        print(k.containerd.log_tail())
        k.stop()
        raise
    yield k
    leftovers = k.stop()
    assert not leftovers, f"libcni cache entries left behind: {leftovers}"


def test_pods_on_the_lan(kube):
    a = kube.run_pod(kube.spec("mv-a"))
    b = kube.run_pod(kube.spec("mv-b"))
    assert a.ip.startswith("192.168.1.") and b.ip.startswith("192.168.1.") and a.ip != b.ip
    for pod, other in ((a, b.ip), (b, a.ip)):
        for target in (other, PEER):
            assert sh("ping", "-c", "1", "-W", "3", target, ns=pod.netns, check=False).returncode == 0, (pod, target)
    links = json.loads(sh("ip", "-j", "-d", "link", "show", "eth0", ns=a.netns).stdout)
    assert links[0]["linkinfo"]["info_kind"] == "macvlan"
    neigh = {n["dst"]: n.get("lladdr") for n in json.loads(sh("ip", "-j", "neigh", "show", ns=kube.lan).stdout)}
    assert neigh.get(a.ip) == links[0]["address"]
    for pod in (a, b):
        kube.remove_pod(pod.id)
    assert kube.node.leftovers() == CLEAN
    assert [n for n, link in kube.node.links().items()
            if link.get("linkinfo", {}).get("info_kind") == "macvlan"] == []
