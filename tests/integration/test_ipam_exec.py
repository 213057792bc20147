"""cnm-ipam executed as a runtime does: many processes at once on one range, and the
default-pool choice against the routes of the namespace the plugin runs in."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess

from support.common import BIN, unique


def plugin_env(cnm_env: dict, command: str, cid: str, ifname: str = "eth0") -> dict:
    env = dict(cnm_env)
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS="/proc/self/ns/net", CNI_IFNAME=ifname,
               CNI_ARGS="")
    return env


def run_many(argv_prefix: list[str], cnm_env: dict, command: str, conf: dict, cids: list[str]) -> list[tuple]:
    """Start one plugin process per container id at once; (rc, stdout json) of each."""
    stdin = json.dumps(conf).encode()
    procs = []
    for cid in cids:
        p = subprocess.Popen(argv_prefix + [os.path.join(BIN, "cnm-ipam")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=plugin_env(cnm_env, command, cid))
        procs.append(p)
    out = []
    for p in procs:
        stdout, stderr = p.communicate(stdin, timeout=180)
        assert not stderr.strip() or b"Traceback" not in stderr, stderr
        out.append((p.returncode, json.loads(stdout) if stdout.strip() else None))
    return out


def test_fifty_parallel_adds_get_unique_addresses_and_dels_release_them(cnm_env, tmp_path):
    data_dir = tmp_path / "ipam"
    conf = {"cniVersion": "1.0.0", "name": "par", "type": "cnm-bridge",
            "ipam": {"type": "cnm-ipam", "subnet": "10.231.0.0/24", "dataDir": str(data_dir)}}
    cids = [f"ctr{i:02d}" for i in range(50)]
    results = run_many([], cnm_env, "ADD", conf, cids)
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    addrs = [out["ips"][0]["address"] for _, out in results]
    assert len(set(addrs)) == 50
    assert {ipaddress.ip_interface(a).ip for a in addrs} == {ipaddress.ip_address(f"10.231.0.{i}") for i in range(2, 52)}
    lease_dir = data_dir / "par"
    for cid, addr in zip(cids, addrs):
        assert (lease_dir / str(ipaddress.ip_interface(addr).ip)).read_bytes() == f"{cid}\r\neth0".encode()

    results = run_many([], cnm_env, "DEL", conf, cids)
    assert all(rc == 0 for rc, _ in results), results
    assert sorted(os.listdir(lease_dir)) == ["last_reserved_ip.0", "lock"]


def test_default_pool_avoids_the_routes_of_the_plugins_netns(cnm_env, netns, tmp_path):
    path = netns("cnmipam")
    name = os.path.basename(path)
    dummy = unique("cnmd")
    # Routes into the first two default pools, in this namespace only.
    for cmd in (["link", "add", dummy, "type", "bridge"], ["link", "set", dummy, "up"],
                ["addr", "add", "172.17.3.1/24", "dev", dummy], ["route", "add", "172.18.200.0/22", "dev", dummy]):
        subprocess.run(["ip", "-n", name, *cmd], check=True)
    data_dir = tmp_path / "ipam"
    prefix = ["ip", "netns", "exec", name]

    def conf(net):
        return {"cniVersion": "1.1.0", "name": net, "type": "cnm-bridge",
                "ipam": {"type": "cnm-ipam", "dataDir": str(data_dir)}}

    (rc, out), = run_many(prefix, cnm_env, "ADD", conf("pool-a"), ["a1"])
    assert rc == 0, out
    assert out["ips"] == [{"address": "172.19.0.2/16", "gateway": "172.19.0.1"}]
    (rc, out), = run_many(prefix, cnm_env, "ADD", conf("pool-b"), ["b1"])
    assert out["ips"] == [{"address": "172.20.0.2/16", "gateway": "172.20.0.1"}]
    # A route that appears later does not move a network that already has its pool.
    subprocess.run(["ip", "-n", name, "route", "add", "172.19.0.0/16", "dev", dummy], check=True)
    (rc, out), = run_many(prefix, cnm_env, "ADD", conf("pool-a"), ["a2"])
    assert out["ips"] == [{"address": "172.19.0.3/16", "gateway": "172.19.0.1"}]
    (rc, out), = run_many(prefix, cnm_env, "STATUS", conf("pool-c"), ["-"])
    assert rc == 0, out
    assert not (data_dir / "pool-c").exists()  # STATUS changes nothing
