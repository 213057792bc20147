"""One container publishing the same host port on several of its networks, as the reference
bridge + portmap does (podman `--network a,b -p 8300:80`, `podman network connect`).

The reference (Go portmap, iptables): every network appends its DNAT rule, so the port
reaches the container's address on the network ADDed first; when that network is DELed,
the next one's rule takes over; DELing a later network changes nothing. An nft map holds one
element per key: the first endpoint installs it, a later endpoint of the same container
records its own, and the owner's DEL hands the key to the next one (in ADD order). Another
container's port stays a conflict (code 102). Real traffic in the lab's throwaway host netns.

Issue 17 item 7: the second network's ADD failed with "port already allocated ... published by
container <itself>".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.bridge import Lab, with_prev
from support.common import unique
from support.ports import UPLINK_V4, ask, nft_map_elements, outside_host

PORT = 18300
MAPPINGS = [{"hostPort": PORT, "containerPort": 80, "protocol": "tcp"}]

SERVER = r"""
import select, socket, sys, time
socks = []
for address in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, 80))
    s.listen(8)
    socks.append((address, s))
print("ready", flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    ready, _, _ = select.select([s for _, s in socks], [], [], 0.2)
    for address, s in socks:
        if s in ready:
            conn, _ = s.accept()
            conn.sendall(address.encode())
            conn.close()
"""


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    lab.outside = outside_host(lab)
    return lab


@pytest.fixture
def answering():
    """answering(ns, *addresses): a server on port 80 of each address that answers with it."""
    procs = []

    def start(ns: str, *addresses: str) -> None:
        proc = subprocess.Popen(["nsenter", f"--net={ns}", "--", sys.executable, "-c", SERVER, *addresses],
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def network(lab, index: int, mappings=MAPPINGS) -> dict:
    """Network `index` of the lab: its own name, bridge and subnet 10.23<index>.0.0/24."""
    conf = lab.conf(ipam=lab.ipam(f"10.23{index}.0.0/24"), isDefaultGateway=True, ipMasq=True,
                    capabilities={"portMappings": True})
    conf["name"] = f"{lab.network[:26]}-n{index}"
    conf["bridge"] = unique(f"cb{index}")
    conf["runtimeConfig"] = {"portMappings": mappings}
    return conf


def attach(lab, conf, ns, ifname: str, cid: str = "c1") -> tuple[dict, str]:
    """ADD; the result and the container's address on that network."""
    result = lab.add(conf, ns, cid=cid, ifname=ifname)
    return result, result["ips"][0]["address"].split("/")[0]


def who_answers(lab) -> str:
    return ask(lab.outside, "tcp", UPLINK_V4, PORT, tries=3)


def owners(lab) -> set[str]:
    """Owner (endpoint id; the comment is `<endpoint id>@<store tag> <container>`) of every
    published-port element of the port."""
    return {c.split()[0].split("@")[0] for m, k, _, c in nft_map_elements(lab)
            if m.startswith("ports") and k["concat"][-1] == PORT}


def endpoint_of(lab, conf, ifname: str, cid: str = "c1") -> str:
    from cni_plugins.cnm.model import endpoint_id

    return endpoint_id(conf["name"], cid, ifname)


@pytest.mark.parametrize("removed_first", ["first network", "second network"])
def test_two_networks_publish_one_port_as_the_reference_does(lab, answering, removed_first):
    """Issue 17 item 7: the second network's ADD was refused as a conflict with itself."""
    ns = lab.container()
    a, b = network(lab, 1), network(lab, 2)
    res_a, ip_a = attach(lab, a, ns, "eth0")
    run = lab.run("ADD", b, ns, cid="c1", ifname="eth1")
    assert run.rc == 0, run
    res_b, ip_b = run.json, run.json["ips"][0]["address"].split("/")[0]
    answering(ns, ip_a, ip_b)
    assert who_answers(lab) == ip_a  # the network ADDed first, as the reference's first rule
    assert owners(lab) == {endpoint_of(lab, a, "eth0")}
    assert lab.run("CHECK", with_prev(a, res_a), ns, cid="c1", ifname="eth0").rc == 0
    assert lab.run("CHECK", with_prev(b, res_b), ns, cid="c1", ifname="eth1").rc == 0

    if removed_first == "first network":
        assert lab.run("DEL", a, ns, cid="c1", ifname="eth0").rc == 0
        assert who_answers(lab) == ip_b  # the second network's endpoint took the port over
        assert owners(lab) == {endpoint_of(lab, b, "eth1")}
        assert lab.run("CHECK", with_prev(b, res_b), ns, cid="c1", ifname="eth1").rc == 0
        assert lab.run("DEL", b, ns, cid="c1", ifname="eth1").rc == 0
    else:
        assert lab.run("DEL", b, ns, cid="c1", ifname="eth1").rc == 0
        assert who_answers(lab) == ip_a  # unchanged
        assert owners(lab) == {endpoint_of(lab, a, "eth0")}
        assert lab.run("DEL", a, ns, cid="c1", ifname="eth0").rc == 0
    assert who_answers(lab).startswith("ERR")
    assert nft_map_elements(lab) == [] and lab.endpoints() == []


def test_handover_follows_add_order(lab, answering):
    """Three networks: the port passes to the earliest ADDed of the remaining ones."""
    ns = lab.container()
    confs = [network(lab, i) for i in (1, 2, 3)]
    ips = [attach(lab, conf, ns, f"eth{i}")[1] for i, conf in enumerate(confs)]
    answering(ns, *ips)
    assert who_answers(lab) == ips[0]
    assert lab.run("DEL", confs[1], ns, cid="c1", ifname="eth1").rc == 0  # not the owner: nothing moves
    assert who_answers(lab) == ips[0]
    assert lab.run("DEL", confs[0], ns, cid="c1", ifname="eth0").rc == 0
    assert who_answers(lab) == ips[2]
    assert lab.run("DEL", confs[2], ns, cid="c1", ifname="eth2").rc == 0
    assert nft_map_elements(lab) == [] and lab.endpoints() == []


def test_another_container_is_still_refused(lab):
    """The port of one container on two networks is still a conflict for any other container."""
    ns1, ns2 = lab.container(), lab.container()
    a, b = network(lab, 1), network(lab, 2)
    attach(lab, a, ns1, "eth0")
    attach(lab, b, ns1, "eth1")
    for conf in (a, b):
        run = lab.run("ADD", conf, ns2, cid="c2", ifname="eth0")
        assert run.rc != 0 and run.json["code"] == 102, run
        assert "published by container c1" in run.json["msg"], run.json
    assert lab.run("DEL", a, ns1, cid="c1", ifname="eth0").rc == 0
    run = lab.run("ADD", a, ns2, cid="c2", ifname="eth0")  # the port went to c1's eth1, not free
    assert run.rc != 0 and run.json["code"] == 102, run
    assert lab.run("DEL", b, ns1, cid="c1", ifname="eth1").rc == 0
    assert lab.run("DEL", a, ns2, cid="c2", ifname="eth0").rc == 0
    attach(lab, a, ns2, "eth0", cid="c2")  # free now
    assert lab.run("DEL", a, ns2, cid="c2", ifname="eth0").rc == 0
    assert nft_map_elements(lab) == []


def test_partly_shared_ports_hand_over_only_what_was_shared(lab, answering):
    """The second network publishes one more port: it installs that one at once, and gets the
    shared one when the first network goes."""
    ns = lab.container()
    extra = MAPPINGS + [{"hostPort": PORT + 1, "containerPort": 80, "protocol": "tcp"}]
    a, b = network(lab, 1), network(lab, 2, extra)
    _, ip_a = attach(lab, a, ns, "eth0")
    _, ip_b = attach(lab, b, ns, "eth1")
    answering(ns, ip_a, ip_b)
    assert who_answers(lab) == ip_a
    assert ask(lab.outside, "tcp", UPLINK_V4, PORT + 1, tries=3) == ip_b
    assert lab.run("DEL", a, "", cid="c1", ifname="eth0").rc == 0  # no netns, as a runtime may send
    assert who_answers(lab) == ip_b
    assert lab.run("DEL", b, "", cid="c1", ifname="eth1").rc == 0
    assert nft_map_elements(lab) == [] and lab.endpoints() == []


def test_dual_stack_ports_hand_over_in_both_families(lab):
    """IPv4 and IPv6 elements of the port go to the same heir."""
    ns = lab.container()
    a, b = network(lab, 1), network(lab, 2)
    a["ipam"] = lab.ipam("10.231.0.0/24", "fd00:231::/64")
    b["ipam"] = lab.ipam("10.232.0.0/24", "fd00:232::/64")
    lab.add(a, ns, cid="c1", ifname="eth0")
    res_b = lab.add(b, ns, cid="c1", ifname="eth1")
    maps = {m for m, k, _, c in nft_map_elements(lab) if k["concat"][-1] == PORT}
    assert maps == {"ports4_any_addr", "ports4_any_port", "ports6_any_addr", "ports6_any_port"}
    assert owners(lab) == {endpoint_of(lab, a, "eth0")}
    assert lab.run("DEL", a, ns, cid="c1", ifname="eth0").rc == 0
    assert owners(lab) == {endpoint_of(lab, b, "eth1")}
    targets = {str(d) for m, k, d, _ in nft_map_elements(lab) if m.endswith("_addr") and k["concat"][-1] == PORT}
    assert targets == {ip["address"].split("/")[0] for ip in res_b["ips"]}
    assert lab.run("CHECK", with_prev(b, res_b), ns, cid="c1", ifname="eth1").rc == 0
    assert lab.run("DEL", b, ns, cid="c1", ifname="eth1").rc == 0
    assert nft_map_elements(lab) == []


# ---- networks of different stores (attack on issue 26, finding 7) --------------------------------
def other_store(conf: dict, tmp_path, name: str = "cnm-d") -> dict:
    """`conf` with a store of its own (the plugin key stateDir)."""
    return dict(conf, stateDir=str(tmp_path / name))


def cnmctl_gc_of(lab, state_dir: str) -> dict:
    """The node-wide `cnmctl gc` of the store in `state_dir`, in the lab's host netns."""
    import json
    import os

    from support.common import BIN

    env = dict(lab.env, CNM_STATE_DIR=state_dir)
    proc = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), "gc", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc
    return json.loads(proc.stdout)


def gc_both(lab, b: dict) -> None:
    """`cnmctl gc` of each store: neither removes a port the other's live endpoint holds."""
    cnmctl_gc_of(lab, lab.env["CNM_STATE_DIR"])
    cnmctl_gc_of(lab, b["stateDir"])


def waiting_entries(lab) -> list[str]:
    """What is left in the run dir's list of ports waiting for a sibling (bridge/standby.py)."""
    import os

    root = os.path.join(lab.env["CNM_RUN_DIR"], "ports")
    return [os.path.join(here, f) for here, _, files in os.walk(root) for f in files]


@pytest.mark.parametrize("removed_first", ["first network", "second network"])
def test_two_stores_publish_one_port(lab, answering, tmp_path, removed_first):
    """Attack on issue 26, finding 7: one container publishing a port on two networks whose
    stores differ (network B sets stateDir). B's ADD was refused (102 "published by container
    <itself>": only B's own store's endpoints counted as the container's); then, once it was
    let through, A's DEL removed the DNAT and nothing put B's back (B's store never learnt
    the key was free). As the reference portmap: the port answers as long as one of the two
    endpoints lives, from the one ADDed first while both do; `cnmctl gc` of either store
    never removes the other's; nothing is left after both DELs."""
    ns = lab.container()
    a, b = network(lab, 1), other_store(network(lab, 2), tmp_path)
    res_a, ip_a = attach(lab, a, ns, "eth0")
    run = lab.run("ADD", b, ns, cid="c1", ifname="eth1")
    assert run.rc == 0, run
    res_b, ip_b = run.json, run.json["ips"][0]["address"].split("/")[0]
    answering(ns, ip_a, ip_b)
    assert who_answers(lab) == ip_a  # the network ADDed first, as the reference's first rule
    assert owners(lab) == {endpoint_of(lab, a, "eth0")}
    assert lab.run("CHECK", with_prev(a, res_a), ns, cid="c1", ifname="eth0").rc == 0
    assert lab.run("CHECK", with_prev(b, res_b), ns, cid="c1", ifname="eth1").rc == 0
    gc_both(lab, b)
    assert who_answers(lab) == ip_a

    if removed_first == "first network":
        conf, ifname, survivor, survivor_if, survivor_res, survivor_ip = a, "eth0", b, "eth1", res_b, ip_b
    else:
        conf, ifname, survivor, survivor_if, survivor_res, survivor_ip = b, "eth1", a, "eth0", res_a, ip_a
    assert lab.run("DEL", conf, ns, cid="c1", ifname=ifname).rc == 0
    assert who_answers(lab) == survivor_ip  # the DEL never takes the port from the one left
    assert owners(lab) == {endpoint_of(lab, survivor, survivor_if)}
    assert lab.run("CHECK", with_prev(survivor, survivor_res), ns, cid="c1", ifname=survivor_if).rc == 0
    gc_both(lab, b)
    assert who_answers(lab) == survivor_ip
    assert lab.run("DEL", survivor, ns, cid="c1", ifname=survivor_if).rc == 0
    assert who_answers(lab).startswith("ERR")
    assert nft_map_elements(lab) == [] and waiting_entries(lab) == []


def test_handover_across_stores_follows_add_order(lab, answering, tmp_path):
    """Attack on issue 26, finding 7: three networks, the second of another store. The port
    passes to the earliest ADDed remaining endpoint whatever its store: A (store 1) -> B
    (store 2) -> C (store 1, which waited behind a sibling of its own store, then behind B)."""
    ns = lab.container()
    a, b, c = network(lab, 1), other_store(network(lab, 2), tmp_path), network(lab, 3)
    _, ip_a = attach(lab, a, ns, "eth0")
    _, ip_b = attach(lab, b, ns, "eth1")
    _, ip_c = attach(lab, c, ns, "eth2")
    answering(ns, ip_a, ip_b, ip_c)
    assert who_answers(lab) == ip_a
    assert lab.run("DEL", a, ns, cid="c1", ifname="eth0").rc == 0
    assert who_answers(lab) == ip_b
    assert lab.run("DEL", b, ns, cid="c1", ifname="eth1").rc == 0
    assert who_answers(lab) == ip_c
    assert lab.run("DEL", c, ns, cid="c1", ifname="eth2").rc == 0
    assert who_answers(lab).startswith("ERR")
    assert nft_map_elements(lab) == [] and waiting_entries(lab) == []


def test_another_container_of_another_store_is_still_refused(lab, answering, tmp_path):
    """Attack on issue 26, finding 7: only the same container shares a port across stores:
    another container is refused (102), and so is one that merely carries the same
    container id in another network namespace (its namespace does not hold the address
    the port leads to); after a handover across stores too."""
    ns1, ns2 = lab.container(), lab.container()
    a, b = network(lab, 1), other_store(network(lab, 2), tmp_path)
    attach(lab, a, ns1, "eth0")
    run = lab.run("ADD", b, ns2, cid="c2", ifname="eth0")
    assert run.rc != 0 and run.json["code"] == 102 and "published by container c1" in run.json["msg"], run
    run = lab.run("ADD", b, ns2, cid="c1", ifname="eth1")  # the same id, another namespace
    assert run.rc != 0 and run.json["code"] == 102 and "published by container c1" in run.json["msg"], run
    _, ip_b = attach(lab, b, ns1, "eth1")
    answering(ns1, ip_b)
    assert lab.run("DEL", a, ns1, cid="c1", ifname="eth0").rc == 0
    assert who_answers(lab) == ip_b
    run = lab.run("ADD", a, ns2, cid="c2", ifname="eth0")
    assert run.rc != 0 and run.json["code"] == 102 and "published by container c1" in run.json["msg"], run
    assert lab.run("DEL", b, ns1, cid="c1", ifname="eth1").rc == 0
    assert nft_map_elements(lab) == [] and waiting_entries(lab) == []
