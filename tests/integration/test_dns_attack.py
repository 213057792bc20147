"""Names on bridge networks under attack (issue 14, hostile review): what an operator or a
container can do to the name server the resident helper runs per DNS-enabled network. Each
test names the finding it reproduces; all run in the test's throwaway namespaces, against a
helper of the test's own (dns_support.DnsLab)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from conftest import in_netns
from dns_support import DnsLab, addresses, aliases, query, resolve

V4 = "10.252.0.0/24"


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = DnsLab(netns, cnm_env, tmp_path, V4)
    lab.start_helper()
    yield lab
    lab.stop_helper()


def ip_of(result: dict) -> str:
    return str(ipaddress.ip_interface(result["ips"][0]["address"]).ip)


def resolve_eventually(ns: str, server: str, name: str, seconds: float = 60) -> tuple[str, list[str]]:
    """The answer once there is one (a server that starts later), failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return resolve(ns, server, name)
        except dns.exception.Timeout:
            assert time.monotonic() < deadline, f"no server answers {name} on {server}"


def test_add_served_in_process_while_a_helper_runs_is_answered(lab):
    """Finding 1: an ADD that runs in-process although a helper runs (its thin path fell back:
    helper busy past READY_TIMEOUT, another build, another mount namespace) on a network the
    helper has no server for never got one: its names stayed unanswered until the helper
    restarted. The helper now notices the store changed and serves the network."""
    conf = lab.dns_conf(dnsUpstreams=[])
    ns = lab.container()
    in_process = dict(lab.env, CNM_HELPER_SOCKET="off")
    helper_env, lab.env = lab.env, in_process
    try:
        me = lab.add(aliases(conf, "fallback"), ns, cid="fallback")
    finally:
        lab.env = helper_env
    name = f"fallback.{lab.network.lower()}.cnm."
    assert resolve_eventually(ns, lab.gateway(), name) == ("NOERROR", [ip_of(me)])


class SlowClients:
    """`count` TCP connections from netns `ns` to `server`:53, each kept busy: a query asked and
    answered (so the server has taken it), then a byte of the next one now and then, so it is
    never idle."""

    def __init__(self, ns: str, server: str, name: str, count: int):
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=in_netns, args=(ns, self._run, server, name, count), daemon=True)
        self.thread.start()
        assert self.ready.wait(60)

    def _run(self, server, name, count):
        wire = dns.message.make_query(name, "A").to_wire()
        framed = struct.pack("!H", len(wire)) + wire
        for _ in range(count):
            conn = socket.create_connection((server, 53), timeout=10)
            self.conns.append(conn)
            try:
                conn.sendall(framed)
                conn.recv(2)
            except OSError:
                pass  # refused: every slot is taken already
        self.ready.set()
        while not self.stop.wait(1.0):
            for conn in self.conns:
                try:
                    conn.send(framed[:1])  # never completes the query
                except OSError:
                    pass
        for conn in self.conns:
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)


def test_one_container_cannot_take_every_tcp_slot(lab):
    """Finding 2: a container holding 32 slow TCP connections (each trickling a byte a second)
    took all of its network's TCP slots, for as long as it liked: every other container's TCP
    query (needed for a truncated answer) was refused. Now a client address holds a few slots
    at most, and the others answer."""
    conf = lab.dns_conf(dnsUpstreams=[])
    bad_ns, good_ns = lab.container(), lab.container()
    lab.add(aliases(conf, "hog"), bad_ns, cid="hog")
    good = lab.add(aliases(conf, "good"), good_ns, cid="good")
    name = f"good.{lab.network.lower()}.cnm."
    hog = SlowClients(bad_ns, lab.gateway(), name, 32)
    try:
        for _ in range(5):
            assert addresses(query(good_ns, lab.gateway(), name, tcp=True, timeout=10)) == [ip_of(good)]
    finally:
        hog.close()


def test_endpoints_of_an_earlier_range_keep_their_name_server(lab):
    """Finding 3: the conflist's ranges may change while endpoints are attached (only the bridge
    and the names' options may not), e.g. an IPv6 network given IPv4 instead. The server then
    moved to the new gateway only: every container made before the change, whose resolv.conf
    names the old gateway, resolved nothing any more. It now listens on the gateways of all
    its network's endpoints."""
    conf = dict(lab.dns_conf(dnsUpstreams=[]), ipam=lab.ipam("fd52::/64"))
    old_ns, new_ns = lab.container(), lab.container()
    old = lab.add(aliases(conf, "old"), old_ns, cid="old")
    new = lab.add(aliases(dict(conf, ipam=lab.ipam(V4)), "new"), new_ns, cid="new")
    assert old["dns"]["nameservers"] == ["fd52::1"] and new["dns"]["nameservers"] == ["10.252.0.1"]
    domain = f"{lab.network.lower()}.cnm."
    assert resolve(new_ns, "10.252.0.1", "new." + domain) == ("NOERROR", [ip_of(new)])
    assert resolve(old_ns, "fd52::1", "new." + domain) == ("NOERROR", [ip_of(new)])


@pytest.mark.parametrize("alias", ["web\u212a", "\u017fite", "\u0131nfo"], ids=["kelvin-k", "long-s", "dotless-i"])
def test_non_ascii_names_are_not_labels(lab, alias):
    """Finding 4: the label check matched case-insensitively in Unicode, so the Kelvin sign,
    the long s and the dotless i passed as DNS letters: `web\u212a` was recorded (and answered)
    as `webk`, a name nobody gave, and the others were recorded as names no query can ask.
    They are ignored now, as every name that is not a DNS label."""
    conf = lab.dns_conf(dnsUpstreams=[])
    ns = lab.container()
    lab.add(aliases(conf, alias, "plain"), ns, cid="uni")
    from cni_plugins.cnm.store import Store

    with Store(lab.env["CNM_STATE_DIR"]).transaction(write=False) as tx:
        (endpoint,) = tx.list_endpoints(network=lab.network)
    assert endpoint.data["dns"]["names"] == ["plain"]
    assert resolve(ns, lab.gateway(), f"webk.{lab.network.lower()}.cnm.")[0] == "NXDOMAIN"


def test_non_ascii_domain_is_refused(netns, cnm_env, tmp_path):
    """Finding 4: a dnsDomain of such letters (`\u017f.test`) was taken, put in the result's
    search list as is (a resolv.conf line no resolver reads as the server's domain, which
    dnspython made `s.test`). Now code 7 naming dnsDomain."""
    lab = DnsLab(netns, cnm_env, tmp_path, V4)
    lab.env["CNM_HELPER_SOCKET"] = "off"
    run = lab.run("ADD", lab.dns_conf(dnsDomain="\u017f.test"), lab.container(), cid="uni")
    assert run.rc != 0 and run.json["code"] == 7 and "dnsDomain" in run.json["msg"], run


def test_cnmctl_run_keeps_the_operators_resolv_conf(lab):
    """Finding 5: `cnmctl run NAME` replaced an /etc/netns/NAME/resolv.conf the operator had
    written (`ip netns exec` uses it), and `cnmctl rm NAME` then deleted it as its own. It is
    kept now (a warning says so), and rm leaves it."""
    import json
    import os
    import shutil
    import subprocess

    from conftest import BIN, unique

    conflist = {"cniVersion": "1.0.0", "name": lab.network,
                "plugins": [lab.dns_conf(dnsUpstreams=[])]}
    (lab.tmp / "net.conflist").write_text(json.dumps(conflist))
    name = unique("cnmatk", 20)
    directory = f"/etc/netns/{name}"
    os.makedirs(directory)
    mine = "nameserver 192.0.2.53\n"

    def cnmctl(*args):
        return subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), *args],
                              env=dict(lab.env, NETCONFPATH=str(lab.tmp)), capture_output=True, text=True,
                              timeout=120)

    try:
        with open(f"{directory}/resolv.conf", "w") as f:
            f.write(mine)
        run = cnmctl("run", name, "--network", lab.network)
        assert run.returncode == 0, run
        assert open(f"{directory}/resolv.conf").read() == mine
        assert "resolv.conf" in run.stderr
        rm = cnmctl("rm", name)
        assert rm.returncode == 0, rm
        assert open(f"{directory}/resolv.conf").read() == mine
    finally:
        if os.path.exists(f"/run/netns/{name}"):
            cnmctl("rm", name)
        if os.path.exists(f"/run/netns/{name}"):
            from cni_plugins.linux import netns as nsmod

            nsmod.remove_named(name)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_store_made_anew_is_what_the_server_answers_from(lab):
    """Finding 6: the server kept reading the database file it had opened. Once that file was
    lost (deleted; the store is made anew by the next ADD, as the store's id file allows), it
    answered the names of the lost file forever and never those of the new one: stale names,
    and an ADD whose name never answered. It now reads the file the store's path names."""
    import os

    conf = lab.dns_conf(dnsUpstreams=[])
    old_ns, new_ns = lab.container(), lab.container()
    old = lab.add(aliases(conf, "old"), old_ns, cid="old")
    domain = f"{lab.network.lower()}.cnm."
    assert resolve(old_ns, lab.gateway(), "old." + domain) == ("NOERROR", [ip_of(old)])
    for suffix in ("", "-wal", "-shm"):
        path = os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db" + suffix)
        if os.path.exists(path):
            os.unlink(path)
    new = lab.add(aliases(conf, "new"), new_ns, cid="new")
    assert resolve(new_ns, lab.gateway(), "new." + domain) == ("NOERROR", [ip_of(new)])
    assert resolve(new_ns, lab.gateway(), "old." + domain)[0] == "NXDOMAIN"


def test_two_networks_cannot_share_a_gateways_name_server(lab):
    """Finding 7: two DNS-enabled networks on one bridge with one gateway (ranges split in
    one subnet) each bound a server to the same address (SO_REUSEPORT), so the kernel handed
    each query to either: a container got its own network's names about half of the time
    (SERVFAIL otherwise) and the other network's names the other half. The second network's
    ADD is now code 7 naming dnsEnabled, and leaves nothing."""
    ra = lab.ipam({"subnet": V4, "rangeStart": "10.252.0.10", "rangeEnd": "10.252.0.99"})
    rb = lab.ipam({"subnet": V4, "rangeStart": "10.252.0.100", "rangeEnd": "10.252.0.199"})
    conf_a = dict(lab.dns_conf(dnsDomain="a.test", dnsUpstreams=[]), ipam=ra)
    conf_b = dict(lab.dns_conf(dnsDomain="b.test", dnsUpstreams=[]), ipam=rb, name=lab.network + "b")
    a_ns, b_ns = lab.container(), lab.container()
    a = lab.add(aliases(conf_a, "alpha"), a_ns, cid="alpha")
    veths = lab.veths()
    run = lab.run("ADD", aliases(conf_b, "beta"), b_ns, cid="beta")
    assert run.rc != 0 and run.json["code"] == 7 and "dnsEnabled" in run.json["msg"], run
    assert lab.veths() == veths
    import os

    leases = os.path.join(lab.data_dir, conf_b["name"])
    assert not os.path.isdir(leases) or [f for f in os.listdir(leases) if f[0].isdigit()] == []
    for _ in range(20):
        assert resolve(a_ns, lab.gateway(), "alpha.a.test.") == ("NOERROR", [ip_of(a)])
