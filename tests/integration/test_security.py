"""Security and the edges of cnm-bridge with real traffic (issue 21): no way from a container
to the host's loopback (item 1), icc=false with published ports (item 7), DEL without the
`conntrack` tool (item 8). Everything runs in the lab's throwaway host netns."""

from __future__ import annotations

import os
import sys

import pytest

from support.bridge import Lab, sh
from support.common import BIN, exec_plugin, pin_names
from support.ports import OUTSIDE_V4, UPLINK_V4, ask, nft_map_elements, outside_host, reach, servers  # noqa: F401

GATEWAY = "10.250.0.1"

# A service of the host's bound to 127.0.0.1 only (TCP and UDP), answering "<tag> <peer>".
LOOPBACK_SERVER = r"""
import select, socket, sys, time
tcp_port, udp_port, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + 60
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", tcp_port)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", udp_port))
print("ready", flush=True)
while time.monotonic() < deadline:
    ready, _, _ = select.select([t, u], [], [], 0.2)
    if t in ready:
        conn, peer = t.accept(); conn.sendall(f"host-loopback {peer[0]}".encode()); conn.close()
    if u in ready:
        data, peer = u.recvfrom(256); u.sendto(f"host-loopback {peer[0]}".encode(), peer)
"""


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    sh("ip", "link", "set", "lo", "up", ns=lab.host)  # the host's 127.0.0.1
    return lab


def ports_conf(lab, mappings, **keys):
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24"), isDefaultGateway=True, capabilities={"portMappings": True},
                    **keys)
    if mappings:
        conf["runtimeConfig"] = {"portMappings": mappings}
    return conf


def assert_all_gone(lab):
    assert [v for v in lab.veths() if v != "up0"] == []
    assert lab.leases() == [] and lab.endpoints() == []
    assert lab.nft_elements() == [] and nft_map_elements(lab) == []


def route_localnet(lab) -> str:
    return lab.sysctl(f"net.ipv4.conf.{lab.bridge}.route_localnet")


def start_loopback_service(lab, servers, tcp_port: int, udp_port: int) -> None:
    import subprocess

    proc = subprocess.Popen(["nsenter", f"--net={lab.host}", "--", sys.executable, "-c", LOOPBACK_SERVER,
                             str(tcp_port), str(udp_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers.procs.append(proc)  # stopped with the fixture's servers
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()


def route_loopback_via_gateway(ns: str) -> None:
    """What a container with CAP_NET_ADMIN can do in its own netns: send 127.0.0.0/8 to its
    gateway and accept 127/8 sources on eth0 (the replies)."""
    sh("ip", "route", "del", "local", "127.0.0.0/8", "table", "local", ns=ns, check=False)
    sh("ip", "route", "add", "127.0.0.0/8", "via", GATEWAY, "dev", "eth0", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", "net.ipv4.conf.all.route_localnet=1", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0", ns=ns)


# ---- item 1: the host's loopback ---------------------------------------------------------------
def test_container_cannot_reach_the_hosts_loopback_services(lab, servers):
    """Issue 21 item 1 (CVE-2020-8558 class): with a port published on the bridge (which turns
    route_localnet on), a container that routes 127.0.0.0/8 to its gateway read TCP and UDP
    services bound to the host's 127.0.0.1. The input chain of `table inet cnm` drops it."""
    start_loopback_service(lab, servers, 9990, 9991)
    assert reach(lab.host, "tcp", "127.0.0.1", 9990).startswith("host-loopback")  # the service works
    conf = ports_conf(lab, [{"hostPort": 8080, "containerPort": 80}])
    ns1, attacker = lab.container(), lab.container()
    lab.add(conf, ns1, cid="c1")
    lab.add(ports_conf(lab, []), attacker, cid="c2")
    assert route_localnet(lab) == "1"  # the published port needs it
    route_loopback_via_gateway(attacker)
    assert ask(attacker, "tcp", "127.0.0.1", 9990).startswith("ERR")
    assert ask(attacker, "udp", "127.0.0.1", 9991).startswith("ERR")
    assert ask(attacker, "tcp", "127.0.0.2", 9990).startswith("ERR")
    # the published port itself still works from the host's 127.0.0.1
    servers.start(ns1, "c1", "tcp:80")
    assert reach(lab.host, "tcp", "127.0.0.1", 8080).startswith("c1 ")
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    assert lab.run("DEL", ports_conf(lab, []), attacker, cid="c2").rc == 0
    assert_all_gone(lab)


def test_container_cannot_reach_a_port_published_on_loopback(lab, servers):
    """Issue 21 item 1: a port published on the host's 127.0.0.1 is the host's alone; a
    container routing 127/8 to its gateway was DNATed to it in prerouting."""
    conf = ports_conf(lab, [{"hostPort": 8081, "containerPort": 80, "hostIP": "127.0.0.1"}])
    ns1, attacker = lab.container(), lab.container()
    lab.add(conf, ns1, cid="c1")
    lab.add(ports_conf(lab, []), attacker, cid="c2")
    servers.start(ns1, "c1", "tcp:80")
    assert reach(lab.host, "tcp", "127.0.0.1", 8081).startswith("c1 ")
    route_loopback_via_gateway(attacker)
    assert ask(attacker, "tcp", "127.0.0.1", 8081).startswith("ERR")
    assert reach(lab.host, "tcp", "127.0.0.1", 8081).startswith("c1 ")
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    assert lab.run("DEL", ports_conf(lab, []), attacker, cid="c2").rc == 0
    assert_all_gone(lab)


def test_route_localnet_only_while_a_port_needs_it(lab, servers):
    """Issue 21 item 1: route_localnet was set at the first published port and never reset.
    It is on while an endpoint of the bridge publishes a port the host reaches at 127.0.0.1
    (bound to every address or to 127/8), and back to the value found after the last."""
    plain = ports_conf(lab, [])
    elsewhere = ports_conf(lab, [{"hostPort": 8082, "containerPort": 80, "hostIP": GATEWAY}])
    anywhere1 = ports_conf(lab, [{"hostPort": 8083, "containerPort": 80}])
    anywhere2 = ports_conf(lab, [{"hostPort": 8084, "containerPort": 80, "protocol": "udp"}])
    ns0, ns1, ns2, ns3 = (lab.container() for _ in range(4))
    lab.add(plain, ns0, cid="c0")
    assert route_localnet(lab) == "0"
    lab.add(elsewhere, ns1, cid="c1")  # bound to the gateway address only: not needed
    assert route_localnet(lab) == "0"
    lab.add(anywhere1, ns2, cid="c2")
    assert route_localnet(lab) == "1"
    lab.add(anywhere2, ns3, cid="c3")
    servers.start(ns2, "c2", "tcp:80")
    assert lab.run("DEL", anywhere1, ns2, cid="c2").rc == 0
    assert route_localnet(lab) == "1"  # c3 still needs it
    assert lab.run("DEL", anywhere2, "", cid="c3").rc == 0  # (a DEL with no netns)
    assert route_localnet(lab) == "0"
    # a value found at 1 (someone else's choice) is what comes back
    sh("sysctl", "-qw", f"net.ipv4.conf.{lab.bridge}.route_localnet=1", ns=lab.host)
    lab.add(anywhere1, ns2, cid="c2")
    assert reach(lab.host, "tcp", "127.0.0.1", 8083).startswith("c2 ")
    assert lab.run("DEL", anywhere1, ns2, cid="c2").rc == 0
    assert route_localnet(lab) == "1"
    assert lab.run("DEL", elsewhere, ns1, cid="c1").rc == 0
    assert lab.run("DEL", plain, ns0, cid="c0").rc == 0
    assert os.listdir(os.path.join(lab.env["CNM_RUN_DIR"], "route_localnet")) == []
    assert_all_gone(lab)


def test_route_localnet_released_after_a_crash(lab):
    """An ADD that turned it on and died before its record was written: the runtime's DEL
    (no record) finds who needed it and puts it back."""
    conf = ports_conf(lab, [{"hostPort": 8085, "containerPort": 80}])
    ns = lab.container()
    lab.add(ports_conf(lab, []), lab.container(), cid="c0")  # the bridge exists before
    crashed = exec_plugin("cnm-bridge", "ADD", conf, lab.env, container_id="c1", netns=ns, ifname="eth0",
                          host_netns=lab.host, extra_env={"CNM_FAULT": "add:nft"})
    assert crashed.rc == 137, crashed
    assert route_localnet(lab) == "1"
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    assert route_localnet(lab) == "0"
    assert lab.run("DEL", ports_conf(lab, []), "", cid="c0").rc == 0
    assert os.listdir(os.path.join(lab.env["CNM_RUN_DIR"], "route_localnet")) == []


# ---- item 7: icc=false and published ports -------------------------------------------------------
@pytest.mark.parametrize("br_netfilter", ["1", "0"])
def test_icc_false_keeps_published_ports_through_the_host(lab, servers, br_netfilter):
    """Issue 21 item 7: with icc=false a container's traffic to its own published port
    (hairpin) was dropped, and with br_netfilter so was a neighbour's through the gateway:
    the DNAT happens inside the bridge and the frame is forwarded port to port. Direct
    traffic between the two stays dropped."""
    if not os.path.isdir("/proc/sys/net/bridge"):
        pytest.skip("no br_netfilter on this kernel")
    sh("sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={br_netfilter}", ns=lab.host)
    conf = ports_conf(lab, [{"hostPort": 8090, "containerPort": 80},
                            {"hostPort": 5390, "containerPort": 53, "protocol": "udp"}], icc=False, ipMasq=True)
    neighbour_conf = ports_conf(lab, [], icc=False, ipMasq=True)
    ns1, ns2 = lab.container(), lab.container()
    r1 = lab.add(conf, ns1, cid="c1")
    lab.add(neighbour_conf, ns2, cid="c2")
    address1 = r1["ips"][0]["address"].split("/")[0]
    servers.start(ns1, "c1", "tcp:80", "udp:53")
    servers.start(ns2, "c2", "tcp:80")
    # hairpin: its own published port, through the gateway address
    assert reach(ns1, "tcp", GATEWAY, 8090) == f"c1 {GATEWAY}"
    assert reach(ns1, "udp", GATEWAY, 5390) == f"c1 {GATEWAY}"
    # the neighbour, through the gateway
    assert reach(ns2, "tcp", GATEWAY, 8090).startswith("c1 ")
    assert reach(ns2, "udp", GATEWAY, 5390).startswith("c1 ")
    # but not directly, either way
    assert ask(ns2, "tcp", address1, 80).startswith("ERR")
    assert ask(ns2, "udp", address1, 53).startswith("ERR")
    assert not lab.ping(ns2, address1)
    assert lab.run("DEL", conf, ns1, cid="c1").rc == 0
    assert lab.run("DEL", neighbour_conf, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


# ---- item 8: conntrack without the tool ---------------------------------------------------------
def conntrack_udp(lab, port: int) -> str:
    return sh("conntrack", "-L", "-p", "udp", "--orig-port-dst", str(port), ns=lab.host, check=False).stdout


def test_del_without_the_conntrack_tool(lab, servers, tmp_path):
    """Issue 21 item 8: DEL of a container with a UDP port failed on every retry without the
    `conntrack` tool (`100 failed to flush UDP conntrack entries`; lease, pin and record
    stayed). The flush goes through ctnetlink: no tool, and the entries still go."""
    bare = tmp_path / "bare-path"
    bare.mkdir()
    (bare / "nsenter").symlink_to("/usr/bin/nsenter")  # (how the test enters its host netns)
    lab.env["PATH"] = str(bare)  # nothing else: no conntrack, no nft, no ip
    outside = outside_host(lab)
    conf = ports_conf(lab, [{"hostPort": 5310, "containerPort": 53, "protocol": "udp"}])
    ns = lab.container()
    address = lab.add(conf, ns)["ips"][0]["address"].split("/")[0]
    servers.start(ns, "c1", "udp:53")
    assert reach(outside, "udp", UPLINK_V4, 5310, sport=40010) == f"c1 {OUTSIDE_V4}"
    assert address in conntrack_udp(lab, 5310)  # (the test's own tool, to look)
    run = lab.run("DEL", conf, ns)
    assert run.rc == 0, run
    assert address not in conntrack_udp(lab, 5310)
    assert_all_gone(lab)
    assert pin_names(lab.env) == []  # the pin went too


def test_doctor_warns_when_udp_ports_cannot_be_flushed(lab, tmp_path):
    """Issue 21 item 8: nothing told the operator that UDP flows would not be flushed. Here
    cnmctl doctor runs without CAP_NET_ADMIN (ctnetlink refuses it) on a node publishing a
    UDP port: a warning; with it: ok."""
    import json
    import subprocess

    conf = ports_conf(lab, [{"hostPort": 5320, "containerPort": 53, "protocol": "udp"}])
    ns = lab.container()
    lab.add(conf, ns)
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    env = dict(lab.env, NETCONFPATH=str(confdir))

    def conntrack_finding(*prefix: str) -> dict:
        proc = subprocess.run([*prefix, "nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), "doctor",
                               "-f", "json"], env=env, capture_output=True, text=True, timeout=120)
        [finding] = [f for f in json.loads(proc.stdout) if f["check"] == "conntrack"]
        return finding

    assert conntrack_finding()["severity"] == "ok"
    without = conntrack_finding("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--")
    assert without["severity"] == "warning" and "publish UDP ports" in without["message"], without
    assert lab.run("DEL", conf, ns).rc == 0
