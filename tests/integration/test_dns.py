"""Names on bridge networks (issue 14): the embedded name server the resident helper runs
per DNS-enabled network, queried from inside container netns. Every plugin exec goes through
a helper of the test's own, started in the test's throwaway host netns; the upstream resolver
is a tiny server inside a test netns."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import BIN, in_netns, unique
from dns_support import DnsLab, Upstream, addresses, aliases, query, resolve

V4, V6 = "10.251.0.0/24", "fd51::/64"
PYTHON = "/usr/bin/python3"  # bin/cnm's shebang interpreter


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = DnsLab(netns, cnm_env, tmp_path, V4, V6)
    lab.start_helper()
    yield lab
    lab.stop_helper()


def ip_of(result: dict, family: int = 4) -> str:
    for ip in result["ips"]:
        address = ipaddress.ip_interface(ip["address"]).ip
        if address.version == family:
            return str(address)
    raise AssertionError(result)


def test_name_alias_fqdn_aaaa_and_ptr(lab):
    """Issue 14 items 1-2: the result's dns block; an endpoint answers by its aliases on this
    network and K8S_POD_NAME, bare and as <name>.<dnsDomain>, A and AAAA; PTR gives its first
    name; an unknown name under the domain is NXDOMAIN."""
    conf = lab.dns_conf(dnsDomain="test.internal", dnsUpstreams=[])
    web_ns, client_ns = lab.container(), lab.container()
    web = lab.add(aliases(conf, "web", "www", "not_a_label"), web_ns, cid="web")
    client = lab.add(conf, client_ns, cid="client", args="IgnoreUnknown=1;K8S_POD_NAME=client")
    gw4, gw6 = lab.gateway(4), lab.gateway(6)
    assert web["dns"] == {"nameservers": [gw4, gw6], "search": ["test.internal"]}
    assert client["dns"] == web["dns"]
    web4, web6 = ip_of(web, 4), ip_of(web, 6)
    assert resolve(client_ns, gw4, "web.") == ("NOERROR", [web4])
    assert resolve(client_ns, gw4, "web.test.internal.") == ("NOERROR", [web4])
    assert resolve(client_ns, gw4, "WWW.test.internal.") == ("NOERROR", [web4])
    assert resolve(client_ns, gw4, "web.test.internal.", "AAAA") == ("NOERROR", [web6])
    assert resolve(web_ns, gw4, "client.test.internal.") == ("NOERROR", [ip_of(client, 4)])
    ptr = dns.reversename.from_address(web4).to_text()
    assert resolve(client_ns, gw4, ptr, "PTR") == ("NOERROR", ["web.test.internal."])
    assert resolve(client_ns, gw4, "nobody.test.internal.")[0] == "NXDOMAIN"
    assert resolve(client_ns, gw4, "not_a_label.test.internal.")[0] == "NXDOMAIN"  # ignored, ADD fine
    # TCP too
    assert addresses(query(client_ns, gw4, "web.test.internal.", tcp=True)) == [web4]


def test_default_domain_is_network_name_dot_cnm(lab):
    """Issue 14 item 1: dnsDomain defaults to <network name>.cnm."""
    conf = lab.dns_conf()
    ns = lab.container()
    result = lab.add(aliases(conf, "solo"), ns, cid="solo")
    domain = f"{lab.network.lower()}.cnm"
    assert result["dns"]["search"] == [domain]
    assert resolve(ns, lab.gateway(), f"solo.{domain}.") == ("NOERROR", [ip_of(result)])


def test_gone_right_after_del_and_answerable_right_after_add(lab):
    """Issue 14 item 3: no stale window, no sleep: each ADD's name answers as soon as the ADD
    returned and is NXDOMAIN as soon as its DEL returned."""
    conf = lab.dns_conf(dnsUpstreams=[])
    client_ns = lab.container()
    lab.add(conf, client_ns, cid="client")
    gw = lab.gateway()
    domain = f"{lab.network.lower()}.cnm."
    for round_ in range(5):
        ns = lab.container()
        result = lab.add(aliases(conf, "flip"), ns, cid=f"flip{round_}")
        assert resolve(client_ns, gw, "flip." + domain) == ("NOERROR", [ip_of(result)])
        assert lab.run("DEL", aliases(conf, "flip"), ns, cid=f"flip{round_}").rc == 0
        assert resolve(client_ns, gw, "flip." + domain)[0] == "NXDOMAIN"


def test_names_are_scoped_to_their_network(netns, cnm_env, tmp_path):
    """Issue 14 item 2: a container on network B never resolves a name of network A, neither
    through B's server nor by asking A's (A's server hears only A's bridge)."""
    lab = DnsLab(netns, cnm_env, tmp_path, "10.251.1.0/24")
    lab.start_helper()
    try:
        conf_a = lab.dns_conf(dnsDomain="a.test", dnsUpstreams=[])
        conf_b = dict(lab.dns_conf(dnsDomain="b.test", dnsUpstreams=[], isDefaultGateway=True), name=lab.network + "b",
                      bridge=unique("cnb"), ipam=lab.ipam("10.251.2.0/24"))
        a_ns, b_ns = lab.container(), lab.container()
        a = lab.add(aliases(conf_a, "alpha"), a_ns, cid="alpha")
        lab.add(aliases(conf_b, "beta"), b_ns, cid="beta")
        assert resolve(a_ns, "10.251.1.1", "alpha.a.test.") == ("NOERROR", [ip_of(a)])
        assert resolve(b_ns, "10.251.2.1", "alpha.b.test.")[0] == "NXDOMAIN"
        assert resolve(b_ns, "10.251.2.1", "beta.b.test.")[0] == "NOERROR"
        # A's gateway is routed from B's container, but A's server is bound to A's bridge
        with pytest.raises(dns.exception.Timeout):
            query(b_ns, "10.251.1.1", "alpha.a.test.", timeout=2)
        with pytest.raises((dns.exception.Timeout, ConnectionRefusedError)):  # no listener there
            query(b_ns, "10.251.1.1", "alpha.a.test.", tcp=True, timeout=2)
    finally:
        lab.stop_helper()


def test_forwarding_to_upstream_and_timeout(lab):
    """Issue 14 item 3: other names go to dnsUpstreams; a silent upstream is a SERVFAIL after
    the forwarding timeout, and the server keeps answering meanwhile."""
    upstream_addr = "10.251.0.53"
    conf = lab.dns_conf(dnsUpstreams=[upstream_addr])
    up_ns, client_ns = lab.container(), lab.container()
    lab.add(conf, up_ns, cid="upstream", args=f"IP={upstream_addr}")
    client = lab.add(aliases(conf, "client"), client_ns, cid="client")
    upstream = Upstream(up_ns, upstream_addr)
    try:
        gw = lab.gateway()
        assert resolve(client_ns, gw, "outside.example.") == ("NOERROR", [Upstream.ANSWER])
        assert resolve(client_ns, gw, "missing.example.")[0] == "NXDOMAIN"
        with ThreadPoolExecutor(2) as pool:
            silent = pool.submit(resolve, client_ns, gw, "silent.example.")
            # answered while the silent upstream holds its query
            assert resolve(client_ns, gw, f"client.{lab.network.lower()}.cnm.") == ("NOERROR", [ip_of(client)])
            assert silent.result()[0] == "SERVFAIL"
        assert "silent.example." in upstream.seen
        assert not any(n.startswith("client.") for n in upstream.seen)  # its own names stay local
    finally:
        upstream.stop()


def test_hostile_queries_never_crash_or_wedge(lab):
    """Issue 14 item 3: malformed datagrams, responses, a 64 KiB TCP message, idle and
    half-sent TCP connections beyond the limit, and a query flood from a container: the server
    answers correctly afterwards, over UDP and TCP."""
    conf = lab.dns_conf(dnsUpstreams=[])
    ns = lab.container()
    me = lab.add(aliases(conf, "me"), ns, cid="me")
    gw = lab.gateway()
    name = f"me.{lab.network.lower()}.cnm."
    good = dns.message.make_query(name, "A")

    def hostile():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for junk in (b"", b"\x00", b"\x12\x34\x01", b"\x00" * 12, b"\xff" * 512, b"\x12\x34" + b"\xff" * 4000,
                     good.to_wire()[:20], dns.message.make_response(good).to_wire()):
            udp.sendto(junk, (gw, 53))
        udp.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", (gw, 53))  # pointer loop
        for _ in range(5000):  # a flood
            udp.sendto(good.to_wire(), (gw, 53))
        udp.close()
        held = []
        for _ in range(40):  # idle connections, more than the server serves at once
            conn = socket.create_connection((gw, 53), timeout=5)
            held.append(conn)
        big = socket.create_connection((gw, 53), timeout=5)
        try:
            big.sendall(b"\xff\xff" + b"\x41" * 65535)
        except OSError:
            pass
        half = socket.create_connection((gw, 53), timeout=5)
        half.sendall(b"\x00\x40\x12")
        half.close()
        for conn in held + [big]:
            conn.close()

    in_netns(ns, hostile)
    # A flood fills the socket's queue and what does not fit is dropped (as by any server):
    # the first query after it is asked again, as a stub resolver does.
    assert resolve_retrying(ns, gw, name) == ("NOERROR", [ip_of(me)])
    assert resolve(ns, gw, name) == ("NOERROR", [ip_of(me)])
    # The held connections' slots come free as the server reads their close (it refuses a client
    # over its share meanwhile, and the client retries): they must come free, not leak.
    assert addresses(query_tcp_retrying(ns, gw, name)) == [ip_of(me)]
    reply = in_netns(ns, lambda: dns.query.udp(dns.message.make_query(name, "A"), gw, timeout=10))
    assert reply.rcode() == dns.rcode.NOERROR
    formerr = in_netns(ns, lambda: _raw_udp(gw, b"\x12\x34" + b"\xff" * 30))
    assert formerr is None or dns.message.from_wire(formerr).rcode() == dns.rcode.FORMERR


def resolve_retrying(ns: str, server: str, name: str, attempts: int = 5) -> tuple[str, list[str]]:
    for _ in range(attempts - 1):
        try:
            reply = query(ns, server, name, timeout=2)
        except dns.exception.Timeout:
            continue
        return dns.rcode.to_text(reply.rcode()), addresses(reply)
    return resolve(ns, server, name)


def query_tcp_retrying(ns: str, server: str, name: str, within: float = 12.0) -> dns.message.Message:
    """A TCP query retried, as a stub resolver does, while the server refuses this client because
    its earlier connections still hold their slots (longer than the server's idle limit = a leak)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return query(ns, server, name, tcp=True, timeout=2)
        except (ConnectionError, EOFError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _raw_udp(server: str, wire: bytes) -> bytes | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    try:
        sock.sendto(wire, (server, 53))
        return sock.recv(65535)
    except socket.timeout:
        return None
    finally:
        sock.close()


def test_server_answers_after_helper_restart(lab):
    """Issue 14 item 3: the names are on disk (the store, and the store noted under the run
    dir), so a helper started again serves them before it takes any request."""
    conf = lab.dns_conf(dnsUpstreams=[])
    ns = lab.container()
    me = lab.add(aliases(conf, "keep"), ns, cid="keep")
    name = f"keep.{lab.network.lower()}.cnm."
    assert resolve(ns, lab.gateway(), name) == ("NOERROR", [ip_of(me)])
    lab.stop_helper()
    with pytest.raises(dns.exception.Timeout):
        query(ns, lab.gateway(), name, timeout=1)
    lab.start_helper()
    assert resolve(ns, lab.gateway(), name) == ("NOERROR", [ip_of(me)])


import dns.exception  # noqa: E402
import dns.reversename  # noqa: E402


def test_without_the_helper_state_lets_a_later_server_answer(netns, cnm_env, tmp_path):
    """Issue 14 items 3 and 5: an ADD served in-process (no helper) never imports the DNS
    server, still answers the `dns` block and records the names; `cnmctl doctor` says the
    network has no name server; a helper started later answers from the store; `cnmctl network
    inspect` lists each endpoint's names."""
    lab = DnsLab(netns, cnm_env, tmp_path, "10.251.3.0/24")
    lab.env["CNM_HELPER_SOCKET"] = "off"
    conf = aliases(lab.dns_conf(dnsUpstreams=[]), "early")
    ns = lab.container()
    stdin = json.dumps(conf).encode()
    env = dict(lab.env, CNI_COMMAND="ADD", CNI_CONTAINERID="early", CNI_NETNS=ns, CNI_IFNAME="eth0",
               CNI_PATH=lab.env["CNI_PATH"])
    proc = subprocess.run(["nsenter", f"--net={lab.host}", "--", PYTHON, "-IS", "-X", "importtime",
                           os.path.join(BIN, "cnm-bridge")], input=stdin, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "cni_plugins.drivers.dns.names" in imported  # the measurement works
    assert not {m for m in imported if m.split(".")[0] == "dns" or m.startswith("cni_plugins.drivers.dns.s")}
    result = json.loads(proc.stdout)
    assert result["dns"] == {"nameservers": ["10.251.3.1"], "search": [f"{lab.network.lower()}.cnm"]}

    doctor = cnmctl(lab, "doctor", "--format", "json")
    dns_findings = [f for f in json.loads(doctor.stdout) if f["check"] == "dns"]
    assert [f["severity"] for f in dns_findings] == ["error"], doctor
    assert "10.251.3.1" in dns_findings[0]["message"] and "cnmctl daemon" in dns_findings[0]["fix"]

    lab.env["CNM_HELPER_SOCKET"] = lab.sock
    lab.start_helper()
    try:
        name = f"early.{lab.network.lower()}.cnm."
        assert resolve(ns, "10.251.3.1", name) == ("NOERROR", [ip_of(result)])
        doctor = cnmctl(lab, "doctor", "--format", "json")
        assert [f["severity"] for f in json.loads(doctor.stdout) if f["check"] == "dns"] == ["ok"]
        inspect = json.loads(cnmctl(lab, "network", "inspect", lab.network).stdout)
        assert [e["Names"] for e in inspect[0]["Endpoints"]] == [["early"]]
    finally:
        lab.stop_helper()


def cnmctl(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), *args],
                          env=dict(lab.env, NETCONFPATH=str(lab.tmp)), capture_output=True, text=True, timeout=120)


PARALLEL = 50


def test_parallel_adds_then_each_resolves_all_others(lab):
    """Issue 14 item 6: 50 ADDs at once, then each container resolves all 49 others (A, over
    UDP), and the name all of them share answers all 50 addresses: truncated over UDP without
    EDNS, whole over TCP."""
    conf = lab.dns_conf(dnsDomain="many.test", dnsUpstreams=[])
    spaces = [lab.container() for _ in range(PARALLEL)]

    def add(i):
        return lab.add(aliases(conf, f"n{i}", "all"), spaces[i], cid=f"n{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(add, range(PARALLEL)))
    ips = [ip_of(r) for r in results]
    assert len(set(ips)) == PARALLEL
    gw = lab.gateway()

    def resolve_all(i):
        wrong = []
        for j in range(PARALLEL):
            if j == i:
                continue
            reply = dns.query.udp(dns.message.make_query(f"n{j}.many.test.", "A"), gw, timeout=10)
            if addresses(reply) != [ips[j]]:
                wrong.append((j, addresses(reply)))
        return wrong

    with ThreadPoolExecutor(8) as pool:
        wrong = list(pool.map(lambda i: in_netns(spaces[i], resolve_all, i), range(PARALLEL)))
    assert wrong == [[]] * PARALLEL
    udp = query(spaces[0], gw, "all.many.test.")
    assert udp.flags & dns.flags.TC and not udp.answer
    assert addresses(query(spaces[0], gw, "all.many.test.", tcp=True)) == sorted(ips)
    assert addresses(query(spaces[0], gw, "all.many.test.", payload=4096)) == sorted(ips)  # EDNS: fits


def test_one_networks_flood_does_not_starve_another(netns, cnm_env, tmp_path):
    """Issue 14 item 3: while a container floods its network's server, a container of another
    network gets every answer from its own (each network has a thread of its own)."""
    lab = DnsLab(netns, cnm_env, tmp_path, "10.251.4.0/24")
    lab.start_helper()
    try:
        conf_a = lab.dns_conf(dnsDomain="a.test", dnsUpstreams=[])
        conf_b = dict(lab.dns_conf(dnsDomain="b.test", dnsUpstreams=[]), name=lab.network + "b",
                      bridge=unique("cnb"), ipam=lab.ipam("10.251.5.0/24"))
        a_ns, b_ns = lab.container(), lab.container()
        lab.add(aliases(conf_a, "flooder"), a_ns, cid="flooder")
        b = lab.add(aliases(conf_b, "calm"), b_ns, cid="calm")
        stop = threading.Event()

        def flood():
            wire = dns.message.make_query("flooder.a.test.", "A").to_wire()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            while not stop.is_set():
                for _ in range(200):
                    sock.sendto(wire, ("10.251.4.1", 53))
            sock.close()

        flooder = threading.Thread(target=in_netns, args=(a_ns, flood))
        flooder.start()
        try:
            for _ in range(100):
                assert resolve(b_ns, "10.251.5.1", "calm.b.test.") == ("NOERROR", [ip_of(b)])
        finally:
            stop.set()
            flooder.join()
    finally:
        lab.stop_helper()


def test_server_lets_go_once_its_network_has_no_endpoint(lab):
    """Issue 14 item 3: a network whose last endpoint went has its server stopped (its sockets
    closed: nothing keeps listening, nor holds the namespace) within its housekeeping period;
    the next ADD starts it again and answers at once."""
    from cni_plugins.linux import procnet

    conf = lab.dns_conf(dnsUpstreams=[])
    ns = lab.container()
    lab.add(aliases(conf, "lonely"), ns, cid="lonely")
    gw = lab.gateway()
    assert gw in in_netns(lab.host, procnet.udp_listeners, 53)
    assert lab.run("DEL", aliases(conf, "lonely"), ns, cid="lonely").rc == 0
    deadline = time.monotonic() + 60
    while gw in in_netns(lab.host, procnet.udp_listeners, 53):
        assert time.monotonic() < deadline, "the server still listens a minute after its last endpoint went"
        time.sleep(0.5)
    again = lab.add(aliases(conf, "again"), ns, cid="again")
    assert resolve(ns, gw, f"again.{lab.network.lower()}.cnm.") == ("NOERROR", [ip_of(again)])


@pytest.mark.parametrize("keys, key", [
    ({"dnsEnabled": "yes"}, "dnsEnabled"),
    ({"dnsEnabled": True, "dnsDomain": "bad_domain!"}, "dnsDomain"),
    ({"dnsEnabled": True, "dnsDomain": "a" * 64 + ".test"}, "dnsDomain"),
    ({"dnsEnabled": True, "dnsDomain": 5}, "dnsDomain"),
    ({"dnsEnabled": True, "dnsUpstreams": ["not-an-ip"]}, "dnsUpstreams"),
    ({"dnsEnabled": True, "dnsUpstreams": "10.0.0.1"}, "dnsUpstreams"),
    ({"dnsDomain": "x.test"}, "dnsDomain"),
    ({"dnsEnabled": True, "isGateway": False}, "dnsEnabled"),  # no gateway: nowhere to listen
], ids=["enabled-not-bool", "domain-bad-label", "domain-long-label", "domain-not-string", "upstream-not-ip",
        "upstreams-not-list", "domain-without-enabled", "no-gateway"])
def test_bad_names_config_is_code_7_naming_the_key_and_leaves_nothing(netns, cnm_env, tmp_path, keys, key):
    """Issue 14 item 1: a bad dnsEnabled/dnsDomain/dnsUpstreams is CNI error 7 naming the key,
    and the ADD leaves nothing behind (no veth, no store record, no lease)."""
    from cni_plugins.cnm.store import Store

    lab = DnsLab(netns, cnm_env, tmp_path, "10.251.6.0/24")
    lab.env["CNM_HELPER_SOCKET"] = "off"
    conf = lab.conf(**{"isGateway": True, **keys})
    run = lab.run("ADD", conf, lab.container(), cid="bad")
    assert run.rc != 0 and run.json["code"] == 7, run
    assert key in run.json["msg"], run
    assert not [name for name in lab.links() if name.startswith("cnm")]
    if os.path.exists(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")):
        with Store(lab.env["CNM_STATE_DIR"]).transaction(write=False) as tx:
            assert tx.list_endpoints() == []
    leases = os.path.join(lab.data_dir, lab.network)
    assert not os.path.isdir(leases) or [f for f in os.listdir(leases) if f[0].isdigit()] == []

