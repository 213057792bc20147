"""cnm-overlay end to end on simulated nodes (issue 16 items 1, 3, 4): each node a netns on an
underlay bridge the test makes, with its own state dir; etcd a throwaway cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, ping, sh, tcp_source


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster)
    yield w
    w.cleanup()


def test_one_node_add_builds_bridge_vxlan_and_pod(world):
    n = world.add_node()
    ns, cid, address = n.add_pod()
    held = n.state()
    subnet = ipaddress.ip_network(held["subnet"])
    assert subnet.prefixlen == 24 and subnet.subnet_of(ipaddress.ip_network(world.subnet))
    assert ipaddress.ip_address(address) in subnet
    links = {l["ifname"]: l for l in json.loads(sh("ip", "-d", "-j", "link", "show", ns=n.host).stdout)}
    from cni_plugins.drivers.overlay.mesh import device_names

    bridge, vx = device_names(world.network)
    info = links[vx]["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["port"] == 4789 and info["learning"] is False and info["local"] == n.address
    assert links[vx]["mtu"] == 1450 and links[bridge]["mtu"] == 1450
    assert ping(ns, str(subnet.network_address + 1))
    # The record in etcd names this node and its VTEP
    kvs, _ = world.cluster.client().list_prefix(f"{world.prefix}/overlay/{world.network}/subnets/".encode())
    assert [json.loads(kv.value)["node"] for kv in kvs] == [n.name]
    n.del_pod((ns, cid, address))


def test_two_nodes_pods_reach_each_other(world):
    """Pods on two nodes ping each other both ways; the second node's ADD programs its mesh
    from a fresh list, the first learns of the second on its next stale ADD (no helper)."""
    a, b = world.add_node(), world.add_node()
    pa = a.add_pod()
    pb = b.add_pod()
    assert a.state()["subnet"] != b.state()["subnet"]
    # a's mesh was programmed before b existed: a later ADD on a (stale lease file) updates it.
    from cni_plugins.drivers.overlay import state

    data = a.state()
    data["confirmed"] = 0
    state.write(a.env["CNM_STATE_DIR"], world.network, data)
    pa2 = a.add_pod()
    assert ping(pa[0], pb[2]) and ping(pb[0], pa[2]) and ping(pa2[0], pb[2])


def test_mtu_larger_than_the_underlay_allows_is_refused(world):
    n = world.add_node()
    run = n.run("ADD", n.conf(mtu=1451), world.netns("cnmp"), "c1")
    assert run.rc != 0 and run.json["code"] == 7 and "mtu" in run.json["msg"], run


@pytest.mark.parametrize("keys, key", [
    ({"subnet": "10.0.0.1/16"}, "subnet"),
    ({"subnet": "fd00::/64"}, "subnet"),
    ({"hostSubnetLength": 8}, "hostSubnetLength"),
    ({"vni": 0}, "vni"),
    ({"port": 70000}, "port"),
    ({"leaseTTL": 1}, "leaseTTL"),
    ({"store": {"endpoints": []}}, "store.endpoints"),
    ({"store": {"endpoints": ["127.0.0.1:2379"]}}, "store.endpoints"),
    ({"store": {"endpoints": ["http://h:1"], "certFile": "/x"}}, "store.certFile"),
    ({"bridge": "br0"}, "bridge"),
    ({"dnsEnabled": True, "dnsDomain": "not_a.domain"}, "dnsDomain"),
    ({"dnsEnabled": "yes"}, "dnsEnabled"),
    ({"underlayInterface": "eth0", "underlayAddress": "192.0.2.1"}, "underlayInterface"),
])
def test_bad_config_is_code_7_naming_the_key(world, keys, key):
    n = world.add_node()
    run = n.run("ADD", n.conf(**keys), world.netns("cnmp"), "c1")
    assert run.rc != 0 and run.json["code"] == 7 and key in run.json["msg"] + run.json["details"], run
    assert n.state() is None


def test_exhausted_subnet_is_code_11_naming_the_network(world):
    a, b = world.add_node(), world.add_node()
    a.add_pod(subnet="10.251.0.0/24", hostSubnetLength=25)
    b.add_pod(subnet="10.251.0.0/24", hostSubnetLength=25)
    c = world.add_node()
    run = c.run("ADD", c.conf(subnet="10.251.0.0/24", hostSubnetLength=25), world.netns("cnmp"), "c9")
    assert run.rc != 0 and run.json["code"] == 11 and world.network in run.json["msg"], run
    status = c.run("STATUS", c.conf(subnet="10.251.0.0/24", hostSubnetLength=25))
    assert status.rc != 0 and status.json["code"] == 50 and "exhausted" in status.json["msg"], status
    assert a.run("STATUS", a.conf(subnet="10.251.0.0/24", hostSubnetLength=25)).rc == 0  # it holds its own


def test_add_on_a_leased_node_needs_no_etcd(world):
    """The lease file is fresh: ADD reads it and nothing else (etcd is stopped meanwhile).
    With etcd down and a stale file, ADD still works on the node's own subnet (while its lease
    cannot have expired: test_overlay_attack.py); DEL always."""
    world.ttl = 60
    n = world.add_node()
    first = n.add_pod()
    world.cluster.kill(world.cluster.members[0])
    second = n.add_pod()
    from cni_plugins.drivers.overlay import state

    data = n.state()
    data["confirmed"] = time.time() - 40  # stale (older than leaseTTL/2), not expired
    state.write(n.env["CNM_STATE_DIR"], world.network, data)
    third = n.add_pod()
    subnet = ipaddress.ip_network(n.state()["subnet"])
    assert all(ipaddress.ip_address(p[2]) in subnet for p in (first, second, third))
    assert ping(third[0], first[2])
    status = n.run("STATUS")
    assert status.rc != 0 and status.json["code"] == 51, status
    for pod in (first, second, third):
        n.del_pod(pod)


def test_no_lease_and_no_etcd_is_code_11(world):
    n = world.add_node()
    world.cluster.kill(world.cluster.members[0])
    run = n.run("ADD", n.conf(), world.netns("cnmp"), "c1")
    assert run.rc != 0 and run.json["code"] == 11 and "etcd" in run.json["msg"], run
    status = n.run("STATUS")
    assert status.rc != 0 and status.json["code"] == 50, status


def test_ipmasq_spares_the_cluster_subnet(world):
    """Pod to pod across nodes keeps its source address (ipMasq only for traffic leaving subnet)."""
    a, b = world.add_node(), world.add_node()
    pa = a.add_pod(ipMasq=True)
    pb = b.add_pod(ipMasq=True)
    from cni_plugins.drivers.overlay import state

    data = a.state()
    data["confirmed"] = 0
    state.write(a.env["CNM_STATE_DIR"], world.network, data)
    pa2 = a.add_pod(ipMasq=True)
    assert tcp_source(pb[0], pb[2], pa2[0]) == pa2[2]


def test_del_of_every_pod_leaves_nothing_but_the_lease_and_device(world):
    """DEL of every pod: no veth, IPAM lease file or nft element left; the VXLAN device, the
    bridge and the node's lease stay (the node keeps its subnet)."""
    n = world.add_node()
    caps = {"capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}
    pods = [n.add_pod(ipMasq=True, **caps), n.add_pod(ipMasq=True)]
    from cni_plugins.drivers.overlay import state
    from cni_plugins.drivers.overlay.mesh import device_names

    ipam = state.ipam_dir(n.env["CNM_STATE_DIR"])
    leases = lambda: [f for _, _, files in os.walk(ipam) for f in files  # noqa: E731
                      if f != "lock" and not f.startswith("last_reserved_ip")]
    nft = lambda: sh("nft", "-j", "list", "ruleset", ns=n.host).stdout  # noqa: E731
    assert len(leases()) == 2 and "18080" in nft()
    for pod in list(pods):
        n.del_pod(pod, ipMasq=True, **(caps if pod is pods[0] else {}))
    links = {l["ifname"]: l for l in json.loads(sh("ip", "-d", "-j", "link", "show", ns=n.host).stdout)}
    assert [k for k, l in links.items() if l.get("linkinfo", {}).get("info_kind") == "veth" and k != "eth0"] == []
    assert leases() == []
    ruleset = json.loads(nft())["nftables"]
    elements = [item["set"]["name"] for item in ruleset if "set" in item and item["set"].get("elem")]
    assert elements == [], elements
    bridge, vx = device_names(world.network)
    assert bridge in links and vx in links
    assert n.state() is not None
    kvs, _ = world.cluster.client().list_prefix(f"{world.prefix}/overlay/{world.network}/subnets/".encode())
    assert len(kvs) == 1
