"""cnmctl for the overlay (issue 16 item 6): `network inspect` shows every node's subnet, VTEP,
lease TTL and whether this node's kernel agrees; `doctor` checks etcd reachability, the VXLAN
device, MTUs, and the mesh against etcd."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from support.common import BIN
from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, sh, start_helper, stop_helper, wait_for, mesh_of


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=30)
    yield w
    w.cleanup()


def cnmctl(node, *args):
    env = dict(node.env, NETCONFPATH=str(node.dir / "net.d"))
    env.pop("CNM_HELPER_SOCKET", None)
    return subprocess.run(["nsenter", f"--net={node.host}", "--", os.path.join(BIN, "cnmctl"), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def two_nodes(world):
    a, b = world.add_node(), world.add_node()
    for n in (a, b):
        start_helper(n)
        n.add_pod()
    wait_for(lambda: len(mesh_of(a)) == 1 and len(mesh_of(b)) == 1, what="the mesh")
    return a, b


def test_inspect_shows_every_node_and_the_kernels_agreement(world):
    a, b = two_nodes(world)
    out = cnmctl(a, "network", "inspect", world.network)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)[0]
    assert view["Driver"] == "overlay"
    ov = view["Overlay"]
    assert ov["Node"] == a.name and ov["Store"]["Reachable"]
    nodes = {n["Node"]: n for n in ov["Nodes"]}
    assert nodes[a.name]["Kernel"] == "self" and nodes[b.name]["Kernel"] == "yes"
    assert nodes[b.name]["Subnet"] == b.state()["subnet"] and nodes[b.name]["VtepIP"] == b.address
    assert 0 < nodes[b.name]["LeaseTTL"] <= world.ttl
    doctor = cnmctl(a, "doctor", "--verbose")
    assert "[ok  ] overlay:" in doctor.stdout, doctor.stdout


def test_doctor_finds_a_missing_route_and_an_unreachable_store(world):
    a, b = two_nodes(world)
    stop_helper(a)
    from cni_plugins.drivers.overlay.mesh import device_names

    _, vx = device_names(world.network)
    sh("ip", "route", "del", b.state()["subnet"], "dev", vx, ns=a.host)
    doctor = cnmctl(a, "doctor")
    assert doctor.returncode != 0
    assert f"node {b.name}" in doctor.stdout and "missing in the kernel" in doctor.stdout, doctor.stdout
    view = json.loads(cnmctl(a, "network", "inspect", world.network).stdout)[0]
    assert {n["Node"]: n["Kernel"] for n in view["Overlay"]["Nodes"]}[b.name] == "missing"
    world.cluster.kill(world.cluster.members[0])
    doctor = cnmctl(a, "doctor")
    assert "etcd unreachable" in doctor.stdout and "ADD still works" in doctor.stdout, doctor.stdout
    sh("ip", "link", "del", vx, ns=a.host)
    doctor = cnmctl(a, "doctor")
    assert f"VXLAN device {vx} is missing" in doctor.stdout, doctor.stdout


def test_gc_removes_the_device_of_a_network_the_node_left(world):
    """`cnmctl gc` removes this store's VXLAN device (and with it the mesh) of an overlay network
    whose lease file is gone; a device tagged with another store stays (listed as foreign)."""
    from cni_plugins.drivers.overlay.mesh import device_names

    a, b = world.add_node(), world.add_node()
    a.add_pod()
    pod = b.add_pod()
    b.del_pod(pod)
    _, vx = device_names(world.network)
    foreign = "cnmvxforeign0"
    sh("ip", "link", "add", foreign, "type", "vxlan", "id", "77", "dstport", "4789", "dev", "eth0", ns=b.host)
    sh("ip", "link", "set", foreign, "alias", f"cnm-overlay:{'0' * 12}:{world.network}", ns=b.host)
    gc = cnmctl(b, "gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert sh("ip", "link", "show", vx, ns=b.host, check=False).returncode == 0  # the node still holds its lease
    view = json.loads(cnmctl(b, "network", "inspect", world.network).stdout)[0]
    os.unlink(view["Overlay"]["StateFile"])
    gc = cnmctl(b, "gc")
    assert gc.returncode == 0 and vx in gc.stdout, gc.stdout + gc.stderr
    assert sh("ip", "link", "show", vx, ns=b.host, check=False).returncode != 0
    assert sh("ip", "link", "show", foreign, ns=b.host, check=False).returncode == 0
    assert "another store" in gc.stdout
