"""The attack pass on issue 21: what someone who did not write the issue-21 work found, each
reproduced here the way it was found (throwaway host netns, real traffic, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni_plugins.cli import thin
from support.common import BIN, ROOT, exec_plugin, unique, wait_listening

PYTHON = "/usr/bin/python3"  # bin/cnm's interpreter

# ---- finding 1: cnmd and the context its caller reports ------------------------------------
# A request sent straight to the helper's socket, as a forger would: this checkout's build id,
# the wire format of this checkout's thin.py and, where that format has a context field, the
# helper's own context (what the test process has: the forger knows or guesses it). The delegated
# IPAM is ./evil, relative to the working directory whose descriptor goes with the request.
FORGER = r"""
import inspect, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from cni_plugins.cli import thin
sock_path, context, workdir, netns = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
os.chdir(workdir)
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "forged", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
       "CNI_PATH": ".", "PATH": "/usr/bin:/bin", "CNM_STATE_DIR": workdir + "/state",
       "CNM_RUN_DIR": workdir + "/run", "CNM_LOG_FILE": workdir + "/log", "EVIL_OUT": os.environ["EVIL_OUT"]}
conf = json.dumps({"cniVersion": "1.0.0", "name": "forged", "type": "cnm-bridge", "bridge": "forged0",
                   "ipam": {"type": "evil"}}).encode()
if "context" in inspect.signature(thin.encode_request).parameters:
    request = thin.encode_request("cnm-bridge", env, conf, context, True)
else:  # a request carries no context of its caller's: nothing to forge
    request = thin.encode_request("cnm-bridge", env, conf, True)
fds = [os.open(".", thin.O_PATH | os.O_DIRECTORY), os.open("/proc/self/ns/net", os.O_RDONLY), thin.new_claim(),
       os.open(netns, os.O_RDONLY)]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sock_path)
thin.send_with_fds(s, request, fds)
answer = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
print(answer.decode(errors="replace"))
"""

# The IPAM the forger wants run: it records who it ran as and where, then fails the ADD.
EVIL = """#!/bin/sh
{ grep CapEff /proc/self/status; readlink /proc/self/ns/mnt; } > "$EVIL_OUT"
echo '{"cniVersion":"1.0.0","code":11,"msg":"evil ran"}'
exit 1
"""


@pytest.fixture
def cnmd_socket(tmp_path):
    directory = tmp_path / "cnmd"
    directory.mkdir(mode=0o700)
    sock = str(directory / "cnmd.sock")
    log_path = str(directory / "cnmd.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", sock], stdout=log, stderr=log)
    try:
        wait_listening(sock, proc, log=log_path)
        yield sock, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def helper_context() -> dict:
    """The context the helper has (the test process's: same namespaces, root, capabilities),
    as the request of the code under test carries it."""
    context = getattr(thin, "process_context", None)
    return context() if context is not None else {}


def forge(sock: str, workdir, container: str, prefix: list[str]) -> str:
    os.chmod(workdir, 0o755)
    evil = workdir / "evil"
    evil.write_text(EVIL)
    evil.chmod(0o755)
    env = dict(os.environ, EVIL_OUT=str(workdir / "evil.out"))
    proc = subprocess.run([*prefix, PYTHON, "-I", "-c", FORGER, ROOT, sock, json.dumps(helper_context()),
                           str(workdir), container], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# uid 0 without a single capability (nothing to inherit, nothing to regain by an exec)
NO_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]


@pytest.mark.parametrize("where", ["own mount namespace", "the helper's mount namespace"])
def test_a_caller_without_capabilities_cannot_forge_the_helpers_context(cnmd_socket, tmp_path, netns, where):
    """Attack on issue 21, finding 1: cnmd compared the context its caller *reported* (mount,
    user and pid namespaces, root, capabilities) with its own. A uid-0 process with no
    capabilities, in a mount namespace of its own, sent the helper's values and cnmd ran the
    caller's ./evil IPAM (CNI_PATH=., relative to the working directory it was handed) as full
    root in cnmd's mount namespace. cnmd must read its caller's context from the kernel and
    refuse, without saying which part differs or naming its build."""
    sock, log_path = cnmd_socket
    host, container = netns(), netns()
    workdir = tmp_path / "forger"
    workdir.mkdir()
    prefix = ["nsenter", f"--net={host}", "--"]
    if where == "own mount namespace":
        prefix += ["unshare", "--mount", "--propagation", "private", "--"]
    answer = forge(sock, workdir, container, prefix + NO_CAPS)
    assert not (workdir / "evil.out").exists(), (workdir / "evil.out").read_text()
    assert answer.startswith("NO"), answer
    for leak in ("mnt", "cap", "root", "user", "pid", "build", thin.build_id()):
        assert leak not in answer[2:], answer
    # A genuine root caller in the helper's context, same request: served (the helper ran the
    # IPAM, as root in its own mount namespace): the request itself was well formed.
    control = tmp_path / "control"
    control.mkdir()
    answer = forge(sock, control, container, ["nsenter", f"--net={host}", "--"])
    assert answer.startswith("RS"), answer
    assert "evil ran" in answer
    out = (control / "evil.out").read_text()
    assert out.split()[1:] == [own_capabilities(), os.readlink("/proc/self/ns/mnt")], out


def own_capabilities() -> str:
    with open("/proc/self/status") as f:
        return next(line.split()[1] for line in f if line.startswith("CapEff:"))


def test_a_caller_with_fewer_capabilities_runs_in_process(cnmd_socket, tmp_path):
    """Attack on issue 21, finding 1: the helper serves only a caller whose capabilities (every
    set) are its own; a genuine plugin exec with one capability less runs in-process, with the
    in-process answer, and the helper's log (not the caller) says what differed."""
    sock, log_path = cnmd_socket
    env = dict(os.environ, CNI_COMMAND="VERSION", CNM_HELPER_SOCKET=sock, CNM_STATE_DIR=str(tmp_path / "s"),
               CNM_RUN_DIR=str(tmp_path / "r"))
    argv = [PYTHON, "-IS", "-X", "importtime", os.path.join(BIN, "cnm-none")]

    def version(prefix):
        proc = subprocess.run([*prefix, *argv], env=env, input=b"{}", capture_output=True, timeout=60)
        return proc.returncode, proc.stdout, b"cni_plugins.cli.plugin" not in proc.stderr

    served = version([])
    assert served[2], served
    fewer = version(["setpriv", "--bounding-set=-net_raw", "--"])
    assert fewer == served[:2] + (False,)
    with open(log_path) as f:
        assert "CapBnd differ from the helper's" in f.read()


def test_a_reused_pid_is_not_taken_for_the_caller(monkeypatch):
    """Attack on issue 21, finding 1: without SO_PEERPIDFD (kernels before 6.5) the caller's pid
    is pinned by pidfd_open after the fact, so the process read must hold the connection: here
    the connecting process (this one) hands its end to another and lets go of it, as one whose
    pid was taken over by another process would."""
    import socket

    from cni_plugins.cli import peer

    monkeypatch.setattr(peer, "SO_PEERPIDFD", -1)  # as a kernel that does not know it
    a, b = socket.socketpair()
    try:
        mask = os.umask(0o022)
        os.umask(mask)
        context, umask = peer.caller_context(a)  # this process holds b: it is the caller
        assert context == peer.context_of(os.getpid())[0] and umask == mask
        holder = subprocess.Popen(["sleep", "60"], pass_fds=[b.fileno()])
        try:
            b.close()
            with pytest.raises(peer.Unverified, match="does not hold the connection"):
                peer.caller_context(a)
        finally:
            holder.kill()
            holder.wait()
    finally:
        a.close()
        b.close()


# ---- findings 3 to 6: what a container reaches through the host -------------------------------
from support.bridge import Lab, sh  # noqa: E402
from support.ports import ask, nft_map_elements, reach, servers  # noqa: E402,F401  (servers: a fixture)

GATEWAY = "10.250.0.1"

# A client whose packets leave from a source address of its choice (an address the container
# added to its own interface), answering "<server's answer>" or "ERR ...".
FROM_CLIENT = r"""
import socket, sys
proto, source, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(2)
s.bind((source, 0))
try:
    if proto == "tcp":
        s.connect((host, port)); print(s.recv(256).decode())
    else:
        s.sendto(b"hi", (host, port)); print(s.recvfrom(256)[0].decode())
except OSError as exc:
    print(f"ERR {exc}")
"""


def ask_from(ns: str, proto: str, source: str, host: str, port: int) -> str:
    out = sh(sys.executable, "-c", FROM_CLIENT, proto, source, host, str(port), ns=ns, check=False)
    return out.stdout.strip() or f"ERR {out.stderr.strip()[-200:]}"


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    sh("ip", "link", "set", "lo", "up", ns=lab.host)
    return lab


def bridge_conf(lab, subnet: str = "10.250.0.0/24", mappings=(), **keys) -> dict:
    conf = lab.conf(ipam=lab.ipam(subnet), isDefaultGateway=True, ipMasq=True, capabilities={"portMappings": True},
                    **keys)
    if mappings:
        conf["runtimeConfig"] = {"portMappings": list(mappings)}
    return conf


def address_of(result) -> str:
    return result["ips"][0]["address"].split("/")[0]


def assert_all_gone(lab):
    assert [v for v in lab.veths() if v != "up0"] == []
    assert lab.leases() == [] and lab.endpoints() == []
    assert lab.nft_elements() == [] and nft_map_elements(lab) == []


def test_isolation_holds_for_an_unassigned_address_of_the_own_subnet(lab, servers):
    """Attack on issue 21, finding 3: isolateNetworks matched endpoint addresses only. A
    container that added an unassigned address of its own subnet (10.251.0.200/24) and sent
    from it talked both ways (TCP and UDP) with a container of another bridge network. The
    isolation goes by bridge, as Docker's (-i br -o otherbr drop); hairpin to its own published
    port and the network's own traffic keep working."""
    iso = bridge_conf(lab, "10.251.0.0/24", [{"hostPort": 8110, "containerPort": 80}], isolateNetworks=True)
    iso2 = bridge_conf(lab, "10.251.0.0/24", isolateNetworks=True)
    other = bridge_conf(lab, "10.252.0.0/24", name=unique("brnet", 30), bridge=unique("cnb"))
    nsa, nsa2, nsb = lab.container(), lab.container(), lab.container()
    ra = lab.add(iso, nsa, cid="ca")
    ra2 = lab.add(iso2, nsa2, cid="ca2")
    rb = lab.add(other, nsb, cid="cb")
    servers.start(nsa, "a", "tcp:80")
    servers.start(nsa2, "a2", "tcp:80", "udp:53")
    servers.start(nsb, "b", "tcp:80", "udp:53")
    sh("ip", "addr", "add", "10.251.0.200/24", "dev", "eth0", ns=nsa)
    assert ask_from(nsa, "tcp", address_of(ra), address_of(rb), 80).startswith("ERR")  # (as before)
    assert ask_from(nsa, "tcp", "10.251.0.200", address_of(rb), 80).startswith("ERR")
    assert ask_from(nsa, "udp", "10.251.0.200", address_of(rb), 53).startswith("ERR")
    sh("ip", "addr", "add", "10.251.0.201/24", "dev", "eth0", ns=nsa2)  # its neighbour's way in, too
    assert ask_from(nsb, "tcp", address_of(rb), "10.251.0.201", 80).startswith("ERR")
    # what isolation keeps: its own network, its own published port (hairpin), the gateway
    assert reach(nsa, "tcp", address_of(ra2), 80).startswith("a2 ")
    assert reach(nsa, "tcp", "10.251.0.1", 8110).startswith("a ")
    assert reach(nsa2, "tcp", "10.251.0.1", 8110).startswith("a ")
    assert lab.run("DEL", iso, nsa, cid="ca").rc == 0
    assert ask_from(nsb, "tcp", address_of(rb), "10.251.0.201", 80).startswith("ERR")  # ca2 still isolated
    assert lab.run("DEL", iso2, nsa2, cid="ca2").rc == 0
    assert lab.run("DEL", other, nsb, cid="cb").rc == 0
    assert_all_gone(lab)


# A UDP service of the host's on every address that prints each sender, until a datagram from
# `last` arrives (the control sent after the attack: by then the attack's datagram was handled).
RECORDER = r"""
import socket, sys
port, last = int(sys.argv[1]), sys.argv[2]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port)); u.settimeout(30)
print("ready", flush=True)
while True:
    data, peer = u.recvfrom(256)
    print(peer[0], flush=True)
    if peer[0] == last:
        break
"""

# A raw UDP/IPv4 frame out of `ifname` (AF_PACKET: any source address the container likes).
RAW_UDP = r"""
import socket, struct, sys
ifname, dmac, src, dst, dport = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def checksum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((ifname, 0))
payload = b"spoofed"
udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, len(udp))
udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp)) + udp[8:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
s.send(bytes.fromhex(dmac.replace(":", "")) + s.getsockname()[4] + b"\x08\x00" + ip + udp)
"""


def test_a_loopback_source_from_a_container_is_dropped(lab, servers):
    """Attack on issue 21, finding 4: route_localnet (on while a port is published) also turns
    off the kernel's martian check of the *source*: a raw UDP frame from a container with
    source 127.0.0.2, to its gateway, reached a host UDP service, which took it for a local
    client. Frames from a bridge with a loopback source are dropped; the host's own
    127.0.0.1 -> published port (its answers come back through the bridge) keeps working."""
    conf = bridge_conf(lab, mappings=[{"hostPort": 8120, "containerPort": 80}])
    ns = lab.container()
    result = lab.add(conf, ns)
    assert lab.sysctl(f"net.ipv4.conf.{lab.bridge}.route_localnet") == "1"
    recorder = subprocess.Popen(["nsenter", f"--net={lab.host}", "--", sys.executable, "-c", RECORDER, "9120",
                                 address_of(result)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    servers.procs.append(recorder)
    assert recorder.stdout.readline().strip() == "ready", recorder.stderr.read()
    bridge_mac = lab.link(lab.bridge)["address"]
    sh(sys.executable, "-c", RAW_UDP, "eth0", bridge_mac, "127.0.0.2", GATEWAY, "9120", ns=ns)
    sh(sys.executable, "-c", RAW_UDP, "eth0", bridge_mac, address_of(result), GATEWAY, "9120", ns=ns)  # control
    senders, _ = recorder.communicate(timeout=60)
    assert senders.split() == [address_of(result)], senders
    servers.start(ns, "c1", "tcp:80")
    assert reach(lab.host, "tcp", "127.0.0.1", 8120).startswith("c1 ")
    assert lab.run("DEL", conf, ns).rc == 0
    assert_all_gone(lab)


# An ICMP port unreachable from the container to 127.0.0.1, quoting the UDP flow
# 127.0.0.1:sport -> 127.0.0.1:dport (which has no conntrack entry: conntrack finds it invalid).
ICMP_ERROR = r"""
import socket, struct, sys
sport, dport = int(sys.argv[1]), int(sys.argv[2])
def checksum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack(f"!{len(b) // 2}H", b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
lo = socket.inet_aton("127.0.0.1")
inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, lo, lo)
inner = inner[:10] + struct.pack("!H", checksum(inner)) + inner[12:] + struct.pack("!HHHH", sport, dport, 8, 0)
icmp = struct.pack("!BBHI", 3, 3, 0, 0) + inner
icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(icmp, ("127.0.0.1", 0))
"""

# The host's loopback UDP socket the ICMP error aims at: prints its pending error (0: none)
# once the container's control ping has been answered (see the test).
LOOPBACK_FLOW = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", int(sys.argv[1]))); u.connect(("127.0.0.1", int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
print(u.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
"""


def test_an_icmp_error_without_conntrack_entry_does_not_reach_the_hosts_loopback(lab):
    """Attack on issue 21, finding 5: the loopback guard (`ct status ! dnat`) matches nothing
    for a packet without a conntrack entry: an ICMP port unreachable quoting a loopback UDP
    flow, sent by a container to 127.0.0.1 through its gateway, reached the host's loopback
    socket (ConnectionRefused). Invalid and untracked packets to 127/8 from a bridge are dropped."""
    import errno

    conf = bridge_conf(lab, mappings=[{"hostPort": 8130, "containerPort": 80}])
    ns = lab.container()
    lab.add(conf, ns)
    sh("ip", "route", "del", "local", "127.0.0.0/8", "table", "local", ns=ns, check=False)
    sh("ip", "route", "add", "127.0.0.0/8", "via", GATEWAY, "dev", "eth0", ns=ns)
    sh("sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", "net.ipv4.conf.all.route_localnet=1", ns=ns)
    flow = subprocess.Popen(["nsenter", f"--net={lab.host}", "--", sys.executable, "-c", LOOPBACK_FLOW, "9131", "9132"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert flow.stdout.readline().strip() == "ready", flow.stderr.read()
        sh(sys.executable, "-c", ICMP_ERROR, "9131", "9132", ns=ns)
        assert lab.ping(ns, GATEWAY)  # the control: the host has handled what the container sent before
        out, err = flow.communicate("go\n", timeout=60)
    finally:
        flow.kill()
    assert int(out.split()[-1]) != errno.ECONNREFUSED, (out, err)
    assert int(out.split()[-1]) == 0, (out, err)
    assert lab.run("DEL", conf, ns).rc == 0
    assert_all_gone(lab)


@pytest.mark.parametrize("br_netfilter", ["1", "0"])
def test_icc_false_holds_for_a_neighbour_routed_through_the_gateway(lab, servers, br_netfilter):
    """Attack on issue 21, finding 6: with icc=false only the bridge table dropped frames
    between two ports; a container that routes its neighbour's /32 through the gateway reached
    it (UDP, TCP), one way. The routed path between two ports of an icc=false bridge is dropped
    too (Docker: -i br -o br drop), but for published ports: hairpin, and a neighbour through
    the gateway, keep working."""
    if not os.path.isdir("/proc/sys/net/bridge"):
        pytest.skip("no br_netfilter on this kernel")
    sh("sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={br_netfilter}", ns=lab.host)
    published = bridge_conf(lab, mappings=[{"hostPort": 8140, "containerPort": 80},
                                           {"hostPort": 5340, "containerPort": 53, "protocol": "udp"}], icc=False)
    plain = bridge_conf(lab, icc=False)
    ns1, ns2 = lab.container(), lab.container()
    r1 = lab.add(published, ns1, cid="c1")
    r2 = lab.add(plain, ns2, cid="c2")
    servers.start(ns1, "c1", "tcp:80", "udp:53")
    servers.start(ns2, "c2", "tcp:80", "udp:53")
    sh("ip", "route", "add", f"{address_of(r1)}/32", "via", GATEWAY, ns=ns2)
    sh("ip", "route", "add", f"{address_of(r2)}/32", "via", GATEWAY, ns=ns1)
    assert ask(ns2, "tcp", address_of(r1), 80).startswith("ERR")
    assert ask(ns2, "udp", address_of(r1), 53).startswith("ERR")
    assert ask(ns1, "udp", address_of(r2), 53).startswith("ERR")
    # the published ports: hairpin, and the neighbour through the gateway
    assert reach(ns1, "tcp", GATEWAY, 8140) == f"c1 {GATEWAY}"
    assert reach(ns1, "udp", GATEWAY, 5340) == f"c1 {GATEWAY}"
    assert reach(ns2, "tcp", GATEWAY, 8140).startswith("c1 ")
    assert reach(ns2, "udp", GATEWAY, 5340).startswith("c1 ")
    assert lab.run("DEL", published, ns1, cid="c1").rc == 0
    assert lab.run("DEL", plain, ns2, cid="c2").rc == 0
    assert_all_gone(lab)


def cnmctl(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), *args], env=lab.env,
                          capture_output=True, text=True, timeout=120)


def shared_owner(lab, set_name: str) -> str | None:
    """The owner (endpoint id) in the comment of the lab bridge's element of `set_name`."""
    for family, name, value, comment in lab.nft_elements():
        if name == set_name and value == {"concat": [lab.bridge, lab.bridge]}:
            return comment.split("@")[0]
    return None


@pytest.mark.parametrize("record", ["kept", "lost"])
@pytest.mark.parametrize("option", [{"isolateNetworks": True}, {"icc": False}])
def test_a_bridges_shared_element_outlives_a_swept_endpoint(lab, option, record):
    """Attack on issue 21, findings 3 and 6: isolation and icc=false are now an element per
    bridge (`bridge . bridge`), which its endpoints share. An ADD that crashed after
    installing it (its record lost) must not take it away from the endpoints that stay when a
    sweep removes what it left; the element passes to one of them, and goes with the last."""
    shared_set = "iso_bridges" if "isolateNetworks" in option else "noicc_bridges"
    conf = bridge_conf(lab, **option)
    crashed_ns, ns = lab.container(), lab.container()
    crashed = exec_plugin("cnm-bridge", "ADD", conf, lab.env, container_id="crashed", netns=crashed_ns,
                          ifname="eth0", host_netns=lab.host, extra_env={"CNM_FAULT": "add:nft"})
    assert crashed.rc == 137, crashed
    first = shared_owner(lab, shared_set)
    assert first is not None
    lab.add(conf, ns, cid="c1")
    [(c1_id, _, _)] = [e for e in lab.endpoints() if e[1] == "c1"]
    assert shared_owner(lab, shared_set) == first  # (an element is added once)
    subprocess.run(["ip", "netns", "del", os.path.basename(crashed_ns)], check=True)
    if record == "lost":  # then a sweep finds its elements by their owner tag alone
        import sqlite3

        with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
            db.execute("DELETE FROM endpoints WHERE container_id = 'crashed'")
    proc = cnmctl(lab, "gc", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["errors"] == [], proc
    assert shared_owner(lab, shared_set) == c1_id  # still there, now c1's
    proc = cnmctl(lab, "gc")
    assert proc.returncode == 0 and proc.stdout.startswith("nothing stale"), proc
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    if record == "lost":  # its lease, not provably this store's, waits for the runtime's DEL
        assert lab.run("DEL", conf, "", cid="crashed").rc == 0
    assert_all_gone(lab)


# ---- finding 9: route_localnet left at 1 -------------------------------------------------------
def localnet_markers(lab) -> list[str]:
    """Every file under the run dir's route_localnet markers (any layout)."""
    found = []
    for sub in ("localnet", "route_localnet"):
        for here, _dirs, files in os.walk(os.path.join(lab.env["CNM_RUN_DIR"], sub)):
            found += [os.path.join(here, f) for f in files]
    return found


@pytest.mark.parametrize("record", ["kept", "lost"])
def test_route_localnet_after_a_crashed_add_and_cnmctl_gc(lab, record):
    """Attack on issue 21, finding 9 (b): an ADD that crashed after turning route_localnet on,
    its netns deleted, then `cnmctl gc`: the nft elements and the pin went, but the localnet
    marker stayed and with it route_localnet=1 (its record lost: the sweep found the elements
    by their owner tag, and nothing looked for markers)."""
    conf = bridge_conf(lab, mappings=[{"hostPort": 8150, "containerPort": 80}])
    crashed_ns = lab.container()
    crashed = exec_plugin("cnm-bridge", "ADD", conf, lab.env, container_id="crashed", netns=crashed_ns,
                          ifname="eth0", host_netns=lab.host, extra_env={"CNM_FAULT": "add:nft"})
    assert crashed.rc == 137, crashed
    assert lab.sysctl(f"net.ipv4.conf.{lab.bridge}.route_localnet") == "1"
    subprocess.run(["ip", "netns", "del", os.path.basename(crashed_ns)], check=True)
    if record == "lost":
        import sqlite3

        with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
            db.execute("DELETE FROM endpoints WHERE container_id = 'crashed'")
    proc = cnmctl(lab, "gc", "--format", "json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["errors"] == [], proc
    assert lab.sysctl(f"net.ipv4.conf.{lab.bridge}.route_localnet") == "0"
    assert localnet_markers(lab) == []
    proc = cnmctl(lab, "gc")
    assert proc.returncode == 0 and proc.stdout.startswith("nothing stale"), proc
    if record == "lost":
        assert lab.run("DEL", conf, "", cid="crashed").rc == 0  # its lease (see above)
    assert_all_gone(lab)


def test_route_localnet_per_network_namespace(lab, netns):
    """Attack on issue 21, finding 9 (a): the markers of who needs route_localnet were keyed by
    the bridge's name alone. Two host network namespaces sharing one run dir (as callers of
    one cnmd do), each with a bridge of the same name publishing a port: ADD s1 in A, ADD s2
    in B, DEL s2, DEL s1 left B's knob at 1 (s2's release saw s1's marker and kept it)."""
    other_host = netns("cnmh")
    sh("ip", "link", "set", "lo", "up", ns=other_host)
    conf_a = bridge_conf(lab, "10.250.0.0/24", [{"hostPort": 8160, "containerPort": 80}])
    conf_b = bridge_conf(lab, "10.250.1.0/24", [{"hostPort": 8161, "containerPort": 80}], name=unique("brnet", 30))
    ns1, ns2 = lab.container(), lab.container()
    key = f"net.ipv4.conf.{lab.bridge}.route_localnet"

    def run_in(host, command, conf, ns, cid):
        return exec_plugin("cnm-bridge", command, conf, lab.env, container_id=cid, netns=ns, ifname="eth0",
                           host_netns=host)

    assert run_in(lab.host, "ADD", conf_a, ns1, "s1").rc == 0
    assert run_in(other_host, "ADD", conf_b, ns2, "s2").rc == 0
    assert lab.sysctl(key) == "1" and lab.sysctl(key, ns=other_host) == "1"
    assert run_in(other_host, "DEL", conf_b, ns2, "s2").rc == 0
    assert lab.sysctl(key, ns=other_host) == "0"
    assert lab.sysctl(key) == "1"  # s1 still needs it in A
    assert run_in(lab.host, "DEL", conf_a, ns1, "s1").rc == 0
    assert lab.sysctl(key) == "0" and lab.sysctl(key, ns=other_host) == "0"
    assert localnet_markers(lab) == []


# ---- finding 12: the localnet markers' names and modes --------------------------------------
def knob(lab, bridge: str) -> str:
    """route_localnet of `bridge` in the lab's host (a name with dots: not a dotted sysctl key)."""
    return sh("cat", f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet", ns=lab.host).stdout.strip()


def test_route_localnet_markers_of_any_bridge_name(lab):
    """Attack on issue 21, finding 12: the marker of bridge X's first value (`X.found`) and the
    directory of a bridge named `X.found` were the same path: an ADD on bridge `a21f` after one
    on `a21f.found` failed with code 100 (Is a directory)."""
    dotted = lab.bridge[:9] + ".found"
    conf_dotted = bridge_conf(lab, "10.250.1.0/24", [{"hostPort": 8171, "containerPort": 80}],
                              name=unique("brnet", 30), bridge=dotted)
    conf = bridge_conf(lab, "10.250.0.0/24", [{"hostPort": 8170, "containerPort": 80}], bridge=lab.bridge[:9])
    ns1, ns2 = lab.container(), lab.container()
    lab.add(conf_dotted, ns1, cid="c1")
    lab.add(conf, ns2, cid="c2")
    assert knob(lab, dotted) == "1"
    assert knob(lab, lab.bridge[:9]) == "1"
    assert lab.run("DEL", conf, ns2, cid="c2").rc == 0
    assert knob(lab, lab.bridge[:9]) == "0"
    assert knob(lab, dotted) == "1"
    assert lab.run("DEL", conf_dotted, ns1, cid="c1").rc == 0
    assert knob(lab, dotted) == "0"
    assert localnet_markers(lab) == []


def test_route_localnet_markers_have_their_mode_whatever_the_umask(lab):
    """Attack on issue 21, finding 12: the markers' directories were made with mkdir(0o700) and
    no fchmod: mode 000 under the runtime's umask 0777."""
    import stat

    conf = bridge_conf(lab, mappings=[{"hostPort": 8172, "containerPort": 80}])
    ns = lab.container()
    env = dict(lab.env, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=ns, CNI_IFNAME="eth0")
    proc = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnm-bridge")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120,
                          preexec_fn=lambda: os.umask(0o777))
    assert proc.returncode == 0, proc
    modes = {}
    for sub in ("localnet", "route_localnet"):
        for here, dirs, _files in os.walk(os.path.join(lab.env["CNM_RUN_DIR"], sub)):
            modes[here] = stat.S_IMODE(os.stat(here).st_mode)
    assert modes and set(modes.values()) == {0o700}, {k: oct(v) for k, v in modes.items()}
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    assert localnet_markers(lab) == []


def test_route_localnet_markers_of_the_layout_before(lab):
    """Attack on issue 21, finding 12: the markers' new layout must not strand an endpoint
    recorded in the layout before (RUN_DIR/localnet/<bridge>/<endpoint id>, <bridge>.found),
    as an upgrade in place leaves them: its DEL still puts the knob back."""
    import shutil

    conf = bridge_conf(lab, mappings=[{"hostPort": 8173, "containerPort": 80}])
    ns = lab.container()
    lab.add(conf, ns)
    [(endpoint_id, _, _)] = lab.endpoints()
    run_dir = lab.env["CNM_RUN_DIR"]
    shutil.rmtree(os.path.join(run_dir, "route_localnet"))  # as the version before recorded it:
    os.makedirs(os.path.join(run_dir, "localnet", lab.bridge))
    open(os.path.join(run_dir, "localnet", lab.bridge, endpoint_id), "w").close()
    with open(os.path.join(run_dir, "localnet", lab.bridge + ".found"), "w") as f:
        f.write("0")
    assert knob(lab, lab.bridge) == "1"
    assert lab.run("DEL", conf, ns).rc == 0
    assert knob(lab, lab.bridge) == "0"
    assert localnet_markers(lab) == []


# ---- finding 10: what `cnmd --socket PATH` may remove ---------------------------------------
@pytest.mark.parametrize("what", ["file", "symlink", "directory"])
def test_cnmd_never_removes_what_is_not_a_stale_socket(tmp_path, what):
    """Attack on issue 21, finding 10: `cnmd --socket PATH` unlinked an existing regular file at
    PATH (a failed probe connect was taken for a stale socket). Only a socket nobody listens
    on is removed; anything else stays and cnmd refuses to start."""
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    path = directory / "cnmd.sock"
    if what == "file":
        path.write_text("precious\n")
    elif what == "symlink":
        (directory / "target").write_text("precious\n")
        path.symlink_to(directory / "target")
    else:
        path.mkdir()
    proc = subprocess.run([os.path.join(BIN, "cnmd"), "--socket", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "not a socket" in proc.stderr, proc
    assert os.path.lexists(path)
    if what != "directory":
        assert path.read_text() == "precious\n"


def test_cnmd_replaces_a_stale_socket(tmp_path):
    """Attack on issue 21, finding 10 (what stays allowed): a socket left by a helper that is gone."""
    import socket

    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    path = str(directory / "cnmd.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # bound, never listened: connect is refused
    proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(path, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ---- finding 11: interface names the kernel would refuse or expand -------------------------
@pytest.mark.parametrize("bridge", ["cnq%d", "cnq%s", "a\rb", "a\x0bb", "br\u00e0", "a\x1cb"])
def test_a_bridge_name_the_kernel_would_refuse_or_expand(lab, bridge):
    """Attack on issue 21, finding 11: `"bridge": "a21q%d"` leaked one bridge per ADD (the
    kernel fills in %d: a21q0, a21q1, ... each then reported as "vanished right after
    creation", code 100) and `"a\\rb"` was code 100 instead of 7. Names are checked as the
    kernel's dev_valid_name does, and without '%', before anything is made."""
    conf = bridge_conf(lab, bridge=bridge)
    before = set(lab.links())
    for cid in ("c1", "c2"):
        run = lab.run("ADD", conf, lab.container(), cid=cid)
        assert run.rc != 0 and run.json["code"] == 7 and run.json["msg"] == "invalid bridge", run
        assert "bridge" in run.json["details"]
    assert set(lab.links()) == before
    assert lab.endpoints() == [] and lab.leases() == []


@pytest.mark.parametrize("ifname", ["eth%d", "e\u00e0", "e\rx"])
def test_an_ifname_the_kernel_would_refuse_or_expand(lab, ifname):
    """Attack on issue 21, finding 11: CNI_IFNAME too (code 4: it is an environment variable)."""
    ns = lab.container()
    run = lab.run("ADD", bridge_conf(lab), ns, ifname=ifname)
    assert run.rc != 0 and run.json["code"] == 4 and "CNI_IFNAME" in run.json["msg"], run
    assert [n for n in lab.links(ns) if n != "lo"] == []
    assert lab.endpoints() == [] and lab.leases() == []


# ---- minor: hostIP ::1 ---------------------------------------------------------------------
@pytest.mark.parametrize("key", ["hostIP", "hostBindingIP"])
@pytest.mark.parametrize("address", ["::1", "0:0::1"])
def test_a_port_published_on_ipv6_loopback_is_refused(lab, key, address):
    """Attack on issue 21, minor finding: hostIP "::1" was accepted (exit 0) but can never be
    answered (IPv6 has no route_localnet: the kernel never lets a ::1 packet leave lo for a
    container). Refused with code 7 naming the key, as the IPv4-mapped addresses are."""
    mapping = {"hostPort": 8180, "containerPort": 80}
    if key == "hostIP":
        conf = bridge_conf(lab, mappings=[dict(mapping, hostIP=address)])
    else:
        conf = bridge_conf(lab, mappings=[mapping], hostBindingIP=address)
    conf["ipam"] = lab.ipam("10.250.0.0/24", "fd00:250::/64")
    ns = lab.container()
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and run.json["code"] == 7, run
    assert key in run.json["msg"] + " " + run.json["details"] and "loopback" in run.json["details"], run
    assert lab.link("eth0", ns) is None and lab.link(lab.bridge) is None
    assert lab.endpoints() == [] and lab.leases() == [] and nft_map_elements(lab) == []
