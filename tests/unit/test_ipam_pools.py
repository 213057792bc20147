"""Default address pools for a network without ranges: Docker's list, host routes, other networks."""

from __future__ import annotations

import ipaddress
import json
import os

from cni_plugins.cli.plugin import handle
from cni_plugins.ipam import pools
from cni_plugins.ipam.disk import LeaseDir


def net(text):
    return ipaddress.ip_network(text)


def run(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": ifname}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None


def conf(tmp_path, name="net1", version="1.1.0", **ipam) -> dict:
    return {"cniVersion": version, "name": name, "type": "cnm-bridge",
            "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"), **ipam}}


def test_docker_default_list():
    got = list(pools.candidates(pools.default_pools()))
    assert len(got) == 31
    assert got[:3] == [net("172.17.0.0/16"), net("172.18.0.0/16"), net("172.19.0.0/16")]
    assert got[14] == net("172.31.0.0/16")
    assert got[15] == net("192.168.0.0/20") and got[-1] == net("192.168.240.0/20")


def test_first_free_skips_overlapping_routes_but_not_the_default_route():
    taken = [net("0.0.0.0/0"), net("172.17.5.0/24"), net("172.18.128.0/17"), net("::/0")]
    assert pools.first_free(pools.default_pools(), taken) == net("172.19.0.0/16")
    everything = [net("172.16.0.0/12"), net("192.168.0.0/16")]
    assert pools.first_free(pools.default_pools(), everything) is None


def test_two_networks_get_different_pools_and_keep_them(tmp_path):
    rc, out = run("ADD", conf(tmp_path, "neta"))
    assert rc == 0, out
    a = out["ips"][0]
    rc, out = run("ADD", conf(tmp_path, "netb"))
    b = out["ips"][0]
    assert ipaddress.ip_interface(a["address"]).network != ipaddress.ip_interface(b["address"]).network
    assert a["address"].endswith(".0.2/16") and a["gateway"].endswith(".0.1")
    pool_a = json.loads((tmp_path / "ipam" / "neta" / pools.POOL_FILE).read_text())
    assert pool_a == {"subnet": str(ipaddress.ip_interface(a["address"]).network), "gateway": a["gateway"]}
    # stable: the next ADD on neta uses the same pool
    rc, out = run("ADD", conf(tmp_path, "neta"), "c2")
    assert out["ips"][0]["gateway"] == a["gateway"]


def test_pool_is_not_one_another_network_leases_from(tmp_path):
    # a host-local style network with explicit ranges inside the first default pools
    explicit = conf(tmp_path, "explicit", ranges=[[{"subnet": "172.17.0.0/24"}], [{"subnet": "172.18.3.0/24"}]])
    assert run("ADD", explicit)[0] == 0
    rc, out = run("ADD", conf(tmp_path, "auto"))
    assert rc == 0, out
    assert ipaddress.ip_interface(out["ips"][0]["address"]).network not in (net("172.17.0.0/16"), net("172.18.0.0/16"))


def test_configured_default_address_pools(tmp_path):
    c = conf(tmp_path, "n1", defaultAddressPools=[{"base": "10.200.0.0/16", "size": 24}])
    rc, out = run("ADD", c)
    assert out["ips"] == [{"address": "10.200.0.2/24", "gateway": "10.200.0.1"}]
    c2 = conf(tmp_path, "n2", defaultAddressPools=[{"base": "10.200.0.0/16", "size": 24}])
    rc, out = run("ADD", c2)
    assert out["ips"] == [{"address": "10.200.1.2/24", "gateway": "10.200.1.1"}]


def test_ipv6_default_pools(tmp_path):
    c = conf(tmp_path, defaultAddressPools=[{"base": "fd00:77::/48", "size": 64}])
    rc, out = run("ADD", c)
    assert out["ips"] == [{"address": "fd00:77::2/64", "gateway": "fd00:77::1"}]


def test_no_free_pool(tmp_path):
    one = [{"base": "10.201.0.0/24", "size": 24}]
    assert run("ADD", conf(tmp_path, "n1", defaultAddressPools=one))[0] == 0
    rc, out = run("STATUS", conf(tmp_path, "n2", defaultAddressPools=one))
    assert rc == 1 and out["code"] == 50
    rc, out = run("ADD", conf(tmp_path, "n2", defaultAddressPools=one))
    assert rc == 1 and out["code"] == 101 and "no free default address pool" in out["msg"]
    assert not os.path.exists(tmp_path / "ipam" / "n2")


def test_gc_gives_the_pool_back_when_no_lease_is_left(tmp_path):
    one = [{"base": "10.202.0.0/24", "size": 24}]
    c1 = conf(tmp_path, "n1", defaultAddressPools=one)
    assert run("ADD", c1, "a")[0] == 0
    assert run("GC", dict(c1, **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}))[0] == 0
    assert (tmp_path / "ipam" / "n1" / pools.POOL_FILE).exists()
    assert run("GC", dict(c1, **{"cni.dev/valid-attachments": []}))[0] == 0
    assert not (tmp_path / "ipam" / "n1" / pools.POOL_FILE).exists()
    rc, out = run("ADD", conf(tmp_path, "n2", defaultAddressPools=one))
    assert rc == 0 and out["ips"][0]["gateway"] == "10.202.0.1"


def test_pool_choice_survives_a_del_of_the_last_lease(tmp_path):
    c = conf(tmp_path, "n1")
    rc, out = run("ADD", c, "a")
    assert run("DEL", c, "a") == (0, None)
    rc, again = run("ADD", c, "b")
    assert again["ips"][0]["gateway"] == out["ips"][0]["gateway"]


def test_check_uses_the_chosen_pool(tmp_path):
    c = conf(tmp_path, "n1")
    rc, out = run("ADD", c, "a")
    assert run("CHECK", dict(c, prevResult=out), "a") == (0, None)


def test_pool_file_cannot_be_taken_for_a_lease(tmp_path):
    with LeaseDir(str(tmp_path), "n") as store:
        store.write_atomic(pools.POOL_FILE, b'{"subnet": "10.9.0.0/24"}')
        assert store.leases() == {}
        assert pools.read_pool(store) == net("10.9.0.0/24")
        assert sorted(os.listdir(store.path)) == [pools.POOL_FILE]
