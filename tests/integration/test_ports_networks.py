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

from bridge_support import Lab, with_prev
from conftest import unique
from ports_support import UPLINK_V4, ask, nft_map_elements, outside_host

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
