"""Concurrency (issue 8): many bin/ executables at once, as a busy node's runtime sends
them. Everything runs in a throwaway host netns; the store transaction orders commands."""

from __future__ import annotations

import ipaddress
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.common import pin_names, pin_path

from support.bridge import Lab, sh, with_prev

N = 100


def pins(lab: Lab) -> list[str]:
    return pin_names(lab.env)


def parallel(fn, items, workers: int = N) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def container_addresses(lab: Lab, ns: str) -> list[str]:
    return lab.addrs("eth0", ns)


def assert_consistent(lab: Lab) -> None:
    """Store, kernel and lease files agree: one veth and one lease per bridge endpoint."""
    endpoints = lab.endpoints()
    veths = set(lab.veths())
    assert veths == {"cnm" + e[0][:12] for e in endpoints}, (veths, endpoints)
    assert len(lab.leases()) == len(endpoints)
    owners = {e[3].split("@")[0] for e in lab.nft_elements()}  # <endpoint id>@<store tag>
    assert owners <= {e[0] for e in endpoints}


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def test_100_parallel_adds_then_dels_one_network(lab):
    conf = lab.conf(version="1.1.0", ipMasq=True, isGateway=True)
    spaces = parallel(lambda _: lab.container(), range(N), workers=8)
    runs = parallel(lambda i: lab.run("ADD", conf, spaces[i], cid=f"c{i}"), range(N))
    assert [r.rc for r in runs] == [0] * N, [r for r in runs if r.rc][:3]
    addresses = [r.json["ips"][0]["address"] for r in runs]
    assert len(set(addresses)) == N
    assert all(ipaddress.ip_interface(a).network == ipaddress.ip_network("10.250.0.0/24") for a in addresses)
    # the kernel agrees: each container holds exactly its own address
    for i in random.Random(8).sample(range(N), 10):
        assert container_addresses(lab, spaces[i]) == [addresses[i]]
    assert len(lab.endpoints()) == N and len(pins(lab)) == N
    assert_consistent(lab)
    dels = parallel(lambda i: lab.run("DEL", conf, spaces[i], cid=f"c{i}"), range(N))
    assert [r.rc for r in dels] == [0] * N, [r for r in dels if r.rc][:3]
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_100_parallel_adds_over_several_networks(netns, cnm_env, tmp_path):
    labs = []
    for k in range(4):
        lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam") if not labs else Lab.__new__(Lab)
        if labs:  # same host netns and state, own network, bridge and subnet
            lab.__dict__.update(labs[0].__dict__)
            lab.network = f"{labs[0].network}-{k}"
            lab.bridge = f"{labs[0].bridge[:12]}-{k}"
        labs.append(lab)
    confs = [lab.conf(version="1.1.0", ipam=lab.ipam(f"10.250.{k}.0/24")) for k, lab in enumerate(labs)]
    spaces = parallel(lambda _: labs[0].container(), range(N), workers=8)

    def add(i):
        k = i % len(labs)
        return labs[k].run("ADD", confs[k], spaces[i], cid=f"c{i}")

    runs = parallel(add, range(N))
    assert [r.rc for r in runs] == [0] * N, [r for r in runs if r.rc][:3]
    addresses = [r.json["ips"][0]["address"] for r in runs]
    assert len(set(addresses)) == N
    for i, a in enumerate(addresses):
        assert ipaddress.ip_interface(a).network == ipaddress.ip_network(f"10.250.{i % len(labs)}.0/24")
    assert len(labs[0].veths()) == N

    def delete(i):
        k = i % len(labs)
        return labs[k].run("DEL", confs[k], spaces[i], cid=f"c{i}")

    assert [r.rc for r in parallel(delete, range(N))] == [0] * N
    for lab in labs:
        lab.assert_nothing_left()
    assert pins(labs[0]) == []


def test_mixed_storm_ends_consistent(lab):
    """100 ADD/DEL/CHECK/GC in random order on 30 containers, 16 at a time. GC lists every
    container as valid, so it must remove nothing in flight; everything else may fail
    (CHECK of a deleted container, ADD of an added one) but never leak."""
    conf = lab.conf(version="1.1.0", ipMasq=True, macspoofchk=True, isGateway=True)
    count = 30
    spaces = parallel(lambda _: lab.container(), range(count), workers=8)
    valid = [{"containerID": f"c{i}", "ifname": "eth0"} for i in range(count)]
    results: dict[int, dict] = {}
    rng = random.Random(1234)
    ops = [(rng.choice(["ADD", "ADD", "DEL", "CHECK", "GC"]), rng.randrange(count)) for _ in range(100)]

    def op(item):
        command, i = item
        if command == "GC":
            r = lab.run("GC", dict(conf, **{"cni.dev/valid-attachments": valid}))
            assert r.rc == 0, r
            return r
        c = conf
        if command == "CHECK":
            if i not in results:
                return None
            c = with_prev(conf, results[i])
        r = lab.run(command, c, spaces[i], cid=f"c{i}")
        if command == "ADD" and r.rc == 0:
            results[i] = r.json
        assert r.rc == 0 or r.json, r  # a failure is a CNI error object
        if command == "DEL":
            assert r.rc == 0, r
        return r

    for r in parallel(op, ops, workers=16):
        if r is not None and r.rc != 0:
            assert r.json["code"] != 199, r  # never an internal error
    assert_consistent(lab)
    # every endpoint the store holds is live in its container
    for _, cid, _ in lab.endpoints():
        i = int(cid[1:])
        assert len(container_addresses(lab, spaces[i])) == 1
    assert [r.rc for r in parallel(lambda i: lab.run("DEL", conf, spaces[i], cid=f"c{i}"), range(count))] == [0] * count
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_lo_and_eth0_of_one_pod_at_once(lab):
    """containerd sends the loopback ADD and the eth0 ADD of a pod at the same time."""
    conf = lab.conf(version="1.1.0")
    loopback = {"cniVersion": "1.1.0", "name": "cni-loopback", "type": "cnm-none"}
    pods = [lab.container() for _ in range(10)]
    jobs = [(loopback, "lo"), (conf, "eth0")]
    items = [(p, j) for p in range(len(pods)) for j in range(2)]
    runs = parallel(lambda it: lab.run("ADD", jobs[it[1]][0], pods[it[0]], cid=f"pod{it[0]}",
                                       ifname=jobs[it[1]][1]), items, workers=20)
    assert [r.rc for r in runs] == [0] * len(items), [r for r in runs if r.rc][:3]
    assert len(pins(lab)) == len(pods)  # one sandbox per pod, whichever ADD came first
    for p in pods:
        assert lab.link("lo", ns=p)["operstate"] in ("UNKNOWN", "UP")
        assert len(lab.addrs("eth0", p)) == 1
    runs = parallel(lambda it: lab.run("DEL", jobs[it[1]][0], pods[it[0]], cid=f"pod{it[0]}",
                                       ifname=jobs[it[1]][1]), items, workers=20)
    assert [r.rc for r in runs] == [0] * len(items)
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_parallel_crashes_between_intent_and_outcome_converge(lab):
    """Issue 20 (no node-wide lock): commands run side by side and some die at every step
    between intent and outcome (CNM_FAULT, like SIGKILL). Retried at once in parallel, every
    ADD succeeds with a unique address (no duplicate allocation, no address of a dead
    attempt lost); DELs dying half-way are finished by their retries; nothing is left."""
    from cni_plugins.faults import EXIT_CODE, STEPS

    conf = dict(lab.conf(version="1.1.0", ipMasq=True, isGateway=True), capabilities={"portMappings": True})
    pods = len(STEPS["add"]) * 2
    spaces = parallel(lambda _: lab.container(), range(pods), workers=8)
    in_process = {"CNM_HELPER_SOCKET": "off"}  # a fault must kill the plugin, never a shared helper

    def conf_of(i: int) -> dict:
        return dict(conf, runtimeConfig={"portMappings": [{"hostPort": 19000 + i, "containerPort": 80,
                                                           "protocol": "tcp"}]})

    def add(i: int, fault: str = ""):
        from support.common import exec_plugin

        extra = dict(in_process, CNM_FAULT=fault) if fault else in_process
        return exec_plugin("cnm-bridge", "ADD", conf_of(i), lab.env, container_id=f"c{i}", netns=spaces[i],
                           ifname="eth0", host_netns=lab.host, extra_env=extra)

    steps = STEPS["add"]
    first = parallel(lambda i: add(i, f"add:{steps[i % len(steps)]}" if i % 2 == 0 else ""), range(pods), workers=pods)
    assert all(r.rc == (EXIT_CODE if i % 2 == 0 else 0) for i, r in enumerate(first)), first
    retried = parallel(lambda i: add(i) if i % 2 == 0 else first[i], range(pods), workers=pods)
    assert [r.rc for r in retried] == [0] * pods, [r for r in retried if r.rc][:3]
    addresses = [r.json["ips"][0]["address"] for r in retried]
    assert len(set(addresses)) == pods
    for i in range(pods):
        assert container_addresses(lab, spaces[i]) == [addresses[i]]
    assert len(lab.endpoints()) == pods and len(lab.leases()) == pods
    assert_consistent(lab)

    def delete(i: int, fault: str = ""):
        from support.common import exec_plugin

        extra = dict(in_process, CNM_FAULT=fault) if fault else in_process
        return exec_plugin("cnm-bridge", "DEL", conf_of(i), lab.env, container_id=f"c{i}", netns=spaces[i],
                           ifname="eth0", host_netns=lab.host, extra_env=extra)

    del_steps = STEPS["del"]
    parallel(lambda i: delete(i, f"del:{del_steps[i % len(del_steps)]}" if i % 3 == 0 else ""), range(pods),
             workers=pods)
    again = parallel(delete, range(pods), workers=pods)
    assert [r.rc for r in again] == [0] * pods, [r for r in again if r.rc][:3]
    lab.assert_nothing_left()
    assert pins(lab) == []
