"""cnm-container joined to a cnm-bridge sandbox: the web-service-plus-proxy case.

Each test has its own throwaway "host" netns (bridge_support.Lab), in which the
plugins run, so the bridge, its nftables and the leases are the test's own.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading

import pytest

from support.bridge import Lab, sh, with_prev
from support.common import ROOT, unique
from test_container import Servers, connect, join_conf, none_conf, pin_path, pins, records

SUBNET, GATEWAY = "10.251.0.0/24", "10.251.0.1"


IPAM_TYPES = ["host-local"] + (
    ["cnm-ipam"] if os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "cni_plugins", "ipam", "plugin.py"))
    else []
)


@pytest.fixture(params=IPAM_TYPES)
def lab(request, netns, cnm_env, tmp_path):
    """host-local is the external (exec'd) IPAM whose DEL must get ADD's recorded config."""
    return Lab(netns, cnm_env, tmp_path, ipam_type=request.param)


@pytest.fixture
def hl_lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path)


@pytest.fixture
def procs():
    s = Servers()
    yield s
    s.close()


def bridge_conf(lab):
    return lab.conf(ipam=lab.ipam(SUBNET), isGateway=True, ipMasq=True, macspoofchk=True)


def endpoint_ids(lab) -> dict:
    db = os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")
    with sqlite3.connect(db) as conn:
        return {cid: eid for eid, cid in conn.execute("SELECT id, container_id FROM endpoints WHERE ifname='eth0'")}


def owned_elements(lab, endpoint_id: str) -> list:
    return [e for e in lab.nft_elements() if endpoint_id in str(e[3])]


def join(lab, command, target, netns, cid, **kw):
    return lab.run(command, join_conf(target, **kw), netns, cid=cid, ifname="eth0", plugin="cnm-container")


def test_web_and_proxy_share_a_bridge_sandbox_until_the_last_leaves(lab, procs, cnm_env):
    conf = bridge_conf(lab)
    ns_a, ns_c = lab.container(), lab.container()
    a, b, c = unique("web"), unique("proxy"), unique("other")
    res_a = lab.add(conf, ns_a, cid=a)
    lo = none_conf()  # as containerd does: loopback, then the network
    assert lab.run("ADD", lo, ns_a, cid=a, ifname="lo", plugin="cnm-none").rc == 0
    ip_a = res_a["ips"][0]["address"]
    res_c = lab.add(conf, ns_c, cid=c)
    ip_c = res_c["ips"][0]["address"].split("/")[0]
    ids = endpoint_ids(lab)
    assert owned_elements(lab, ids[a])  # A's masquerade / spoof-check elements
    host_veth_a = res_a["interfaces"][1]["name"]

    # B's process runs in A's netns; its runtime names it by B's own path to it.
    proxy = procs.sleeper(ns_a, lifetime=120)
    ns_b = f"/proc/{proxy.pid}/ns/net"
    add_b = join(lab, "ADD", a, ns_b, b)
    assert add_b.rc == 0, add_b
    # A's eth0 and lo, not the host side of A's veth nor the bridge.
    assert [i["name"] for i in add_b.json["interfaces"]] == ["eth0", "lo"]
    assert add_b.json["interfaces"][0] == dict(res_a["interfaces"][2], sandbox=ns_b)
    assert add_b.json["ips"][0] == dict(res_a["ips"][0], interface=0)
    assert {ip["address"] for ip in add_b.json["ips"]} == {ip_a, "127.0.0.1/8", "::1/128"}
    assert add_b.json.get("routes") == res_a.get("routes") and add_b.json.get("dns") == res_a.get("dns")
    check = lab.run("CHECK", with_prev(join_conf(a), add_b.json), ns_b, cid=b, plugin="cnm-container")
    assert check.rc == 0, check

    # The web service in A on localhost, reached by B's proxy over 127.0.0.1.
    procs.start(ns_a, "127.0.0.1", 8080, "web")
    assert connect(ns_b, "127.0.0.1", 8080) == "hello from web"

    # A leaves: its IP, veth and rules stay for B; then A's runtime removes A's netns path.
    assert lab.run("DEL", conf, ns_a, cid=a).rc == 0
    assert lab.run("DEL", lo, ns_a, cid=a, ifname="lo", plugin="cnm-none").rc == 0
    assert host_veth_a in lab.links() and lab.addrs("eth0", ns_b) == [ip_a]
    assert ip_a.split("/")[0] in lab.leases() and owned_elements(lab, ids[a])
    subprocess.run(["ip", "netns", "del", os.path.basename(ns_a)], check=True)
    assert not os.path.exists(ns_a)

    # B still reaches the gateway and the other sandbox, through its process and the pin.
    server_c = procs.start(ns_c, ip_c, 9090, "C")
    pin = pin_path(cnm_env, a)  # the sandbox is named after its first container
    for way_in in (ns_b, pin):
        assert lab.ping(way_in, GATEWAY), way_in
        assert connect(way_in, ip_c, 9090) == "hello from C"
    proxy.kill()
    proxy.wait()  # no process left in the netns: only the pin holds it now
    assert lab.ping(pin, GATEWAY)
    assert connect(pin, ip_c, 9090) == "hello from C"
    server_c.kill()

    # B, the last member, leaves through cnm-container (its netns path is gone too):
    # A's bridge endpoint goes through the bridge driver with A's recorded config.
    assert join(lab, "DEL", a, ns_b, b).rc == 0
    assert host_veth_a not in lab.links()
    assert lab.leases() == [ip_c]
    assert owned_elements(lab, ids[a]) == [] and owned_elements(lab, ids[c])
    assert [e[0] for e in records(cnm_env)["endpoints"]] == [c] and not os.path.exists(pin)
    assert pins(cnm_env) == [c]  # only C's sandbox is pinned now
    assert join(lab, "DEL", a, ns_b, b).rc == 0  # idempotent
    assert lab.run("DEL", conf, ns_c, cid=c).rc == 0
    lab.assert_nothing_left()
    assert pins(cnm_env) == []


def test_joiner_leaves_first_then_owner_tears_down(hl_lab, procs, cnm_env):
    lab = hl_lab
    conf = bridge_conf(lab)
    ns = lab.container()
    a, b = unique("web"), unique("proxy")
    res_a = lab.add(conf, ns, cid=a)
    assert join(lab, "ADD", a, ns, b).rc == 0
    assert join(lab, "DEL", a, ns, b).rc == 0
    assert lab.addrs("eth0", ns) == [res_a["ips"][0]["address"]]  # A untouched
    assert lab.run("DEL", conf, ns, cid=a).rc == 0
    lab.assert_nothing_left()
    assert pins(cnm_env) == [] and records(cnm_env)["sandboxes"] == []


def test_check_through_the_joiner_runs_the_bridge_check(hl_lab, cnm_env):
    lab = hl_lab
    conf = bridge_conf(lab)
    ns = lab.container()
    a, b = unique("web"), unique("proxy")
    res_a = lab.add(conf, ns, cid=a)
    add_b = join(lab, "ADD", a, ns, b)
    conf_b = with_prev(join_conf(a), add_b.json)
    assert lab.run("CHECK", conf_b, ns, cid=b, plugin="cnm-container").rc == 0
    # Remove A's address behind our back: B's CHECK sees it (the bridge driver's own CHECK).
    sh("ip", "addr", "del", res_a["ips"][0]["address"], "dev", "eth0", ns=ns)
    failed = lab.run("CHECK", conf_b, ns, cid=b, plugin="cnm-container")
    assert failed.rc != 0 and failed.json["code"] == 103, failed
    sh("ip", "addr", "add", res_a["ips"][0]["address"], "dev", "eth0", ns=ns)
    for run in (join(lab, "DEL", a, ns, b), lab.run("DEL", conf, ns, cid=a)):
        assert run.rc == 0, run
    lab.assert_nothing_left()


def test_joining_with_another_netns_changes_nothing(hl_lab, cnm_env):
    lab = hl_lab
    conf = bridge_conf(lab)
    ns_a, ns_x = lab.container(), lab.container()
    a = unique("web")
    lab.add(conf, ns_a, cid=a)
    before = (records(cnm_env), lab.veths(), lab.leases(), lab.nft_elements(), pins(cnm_env))
    bad = join(lab, "ADD", a, ns_x, unique("proxy"))
    assert bad.rc != 0 and bad.json["code"] == 102 and ns_x in bad.json["details"], bad
    ghost = join(lab, "ADD", unique("ghost"), ns_a, unique("proxy"))
    assert ghost.rc != 0 and ghost.json["code"] == 7, ghost
    assert (records(cnm_env), lab.veths(), lab.leases(), lab.nft_elements(), pins(cnm_env)) == before
    assert lab.links(ns_x).keys() == {"lo"}
    assert lab.run("DEL", conf, ns_a, cid=a).rc == 0
    lab.assert_nothing_left()


PROXY = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(float(sys.argv[4]))
print('ready', flush=True)
try:
    while True:
        c, _ = s.accept()
        up = socket.create_connection(('127.0.0.1', int(sys.argv[3])), timeout=5)
        c.sendall(b'proxied ' + up.recv(100)); up.close(); c.close()
except socket.timeout:
    pass
"""


def example(name: str) -> dict:
    """The first plugin of conf/<name>.conflist as a runtime passes it (name, cniVersion injected)."""
    with open(os.path.join(ROOT, "conf", f"{name}.conflist")) as f:
        conflist = json.load(f)
    return dict(conflist["plugins"][0], name=conflist["name"], cniVersion=conflist["cniVersion"])


def test_conf_examples_web_service_behind_a_proxy(hl_lab, procs, cnm_env):
    """conf/bridge.conflist for the web service, conf/container.conflist for its proxy
    (templated: CNI_ARGS CNM_CONTAINER names the actual container). A client in another
    sandbox reaches the proxy on the web's IP; the proxy reaches the web on 127.0.0.1."""
    lab = hl_lab
    web_conf = example("bridge")
    web_conf["bridge"] = lab.bridge  # the test's own bridge and lease dir; the rest as shipped
    web_conf["ipam"] = dict(web_conf["ipam"], dataDir=lab.data_dir)
    proxy_conf = example("container")
    assert proxy_conf["type"] == "cnm-container" and proxy_conf["container"] == "web"
    ns_web, ns_client = lab.container(), lab.container()
    web, proxy, client = unique("web"), unique("proxy"), unique("client")
    lo = none_conf(version="1.1.0")
    for cid, ns in ((web, ns_web), (client, ns_client)):
        assert lab.run("ADD", lo, ns, cid=cid, ifname="lo", plugin="cnm-none").rc == 0
    web_ip = lab.add(web_conf, ns_web, cid=web)["ips"][0]["address"].split("/")[0]
    lab.add(web_conf, ns_client, cid=client)
    lab.network = web_conf["name"]
    assert len(lab.leases()) == 2
    joined = lab.run("ADD", proxy_conf, ns_web, cid=proxy, args=f"IgnoreUnknown=1;CNM_CONTAINER={web}")
    assert joined.rc == 0, joined
    assert web_ip + "/24" in [ip["address"] for ip in joined.json["ips"]]

    procs.start(ns_web, "127.0.0.1", 8080, "web")  # the web service: localhost only
    procs.spawn(ns_web, PROXY, web_ip, 8000, 8080, 60)  # the proxy, on the shared IP
    assert connect(ns_client, web_ip, 8000) == "proxied hello from web"

    for cid, ns, conf, plugin, ifname in ((web, ns_web, web_conf, "cnm-bridge", "eth0"),
                                          (web, ns_web, lo, "cnm-none", "lo"),
                                          (proxy, ns_web, proxy_conf, "cnm-container", "eth0"),
                                          (client, ns_client, web_conf, "cnm-bridge", "eth0"),
                                          (client, ns_client, lo, "cnm-none", "lo")):
        assert lab.run("DEL", conf, ns, cid=cid, ifname=ifname, plugin=plugin).rc == 0
    lab.assert_nothing_left()
    assert pins(cnm_env) == [] and records(cnm_env) == {"sandboxes": [], "endpoints": []}


def test_owner_and_joiner_leave_at_once(hl_lab, cnm_env):
    """Concurrent DELs of both members: whichever the store orders last tears it all down."""
    lab = hl_lab
    conf = bridge_conf(lab)
    ns = lab.container()
    a, b = unique("web"), unique("proxy")
    lab.add(conf, ns, cid=a)
    assert join(lab, "ADD", a, ns, b).rc == 0
    runs = {}
    threads = [threading.Thread(target=lambda: runs.__setitem__("a", lab.run("DEL", conf, ns, cid=a))),
               threading.Thread(target=lambda: runs.__setitem__("b", join(lab, "DEL", a, ns, b)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs["a"].rc == 0 and runs["b"].rc == 0, runs
    lab.assert_nothing_left()
    assert pins(cnm_env) == [] and records(cnm_env) == {"sandboxes": [], "endpoints": []}
