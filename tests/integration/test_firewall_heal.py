"""Issue 21 item 5: our nftables tables wiped (`nft flush ruleset`, a firewall reload, a
deleted table or chain) must not leave the pods that were running broken for good. Their
elements are put back from the store by the next command that declares the tables again, by
`cnmctl gc` (which `cnmctl doctor` and STATUS report as needed), and, without any command,
by the resident helper watching nftables. Checked with real traffic: a published port
answering from an "outside" netns, and the pod's masquerade seen by a server out there.
Everything runs in the lab's throwaway host netns."""

from __future__ import annotations

import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from support.bridge import Lab, sh
from support.common import BIN, exec_plugin, unique
from support.ports import OUTSIDE_V4, UPLINK_V4, ask, nft_map_elements, outside_host, reach, servers  # noqa: F401
from test_helper import start_helper
from test_helper_memory import quiet
import test_ports_networks as two_networks
from test_ports_networks import answering  # noqa: F401 (a fixture)

CNMCTL = os.path.join(BIN, "cnmctl")
OUT_PORT = 7000  # the outside server, which answers with the source address it saw
RESTORE_DEADLINE_S = 10  # generous: a poll bound, not a timed assertion


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    cnm_env["CNM_HELPER_SOCKET"] = "off"  # in-process unless a test starts its own helper
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    lab.confdir = tmp_path / "net.d"
    lab.confdir.mkdir()
    return lab


class Store:
    """One store's pods on its own network (bridge, subnet, host port) in the lab's host netns."""

    def __init__(self, lab: Lab, name: str, subnet: str, host_port: int, state_dir: str | None = None,
                 host: str = ""):
        self.lab = lab
        self.host = host or lab.host  # the netns the plugin runs in (the pods' "host")
        self.env = dict(lab.env, CNM_STATE_DIR=state_dir) if state_dir else lab.env
        self.subnet = subnet
        self.host_port = host_port
        self.bridge = unique("cnb")
        self.network = unique(name, 30)
        self.pods: dict[str, str] = {}

    def conf(self, publish: bool = True) -> dict:
        conf = {"cniVersion": "1.0.0", "name": self.network, "type": "cnm-bridge", "bridge": self.bridge,
                "isDefaultGateway": True, "ipMasq": True, "macspoofchk": True,
                "capabilities": {"portMappings": True},
                "ipam": {"type": "cnm-ipam", "dataDir": self.lab.data_dir, "ranges": [[{"subnet": self.subnet}]]}}
        if publish:
            conf["runtimeConfig"] = {"portMappings": [{"hostPort": self.host_port, "containerPort": 80,
                                                       "protocol": "tcp"}]}
        return conf

    def run(self, command: str, cid: str, publish: bool = True):
        return exec_plugin("cnm-bridge", command, self.conf(publish), self.env, container_id=cid,
                           netns=self.pods.get(cid, ""), ifname="eth0", host_netns=self.host)

    def add(self, cid: str, publish: bool = True) -> None:
        self.pods[cid] = self.lab.container()
        r = self.run("ADD", cid, publish)
        assert r.rc == 0, r

    def delete_all(self) -> None:
        for cid in list(self.pods):
            r = self.run("DEL", cid)
            assert r.rc == 0, r

    def cnmctl(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(self.env, NETCONFPATH=str(self.lab.confdir))
        return subprocess.run(["nsenter", f"--net={self.host}", "--", CNMCTL, *args], env=env,
                              capture_output=True, text=True, timeout=120)

    def owner_tag(self) -> str:
        from support.common import store_id

        return "@" + store_id(self.env)[:12]


def works(lab: Lab, outside: str, store: Store, cid: str) -> bool:
    """The pod's published port answers from outside, and its own traffic out is masqueraded."""
    answer = ask(outside, "tcp", UPLINK_V4, store.host_port, tries=2)
    seen_from = ask(store.pods[cid], "tcp", OUTSIDE_V4, OUT_PORT, tries=2)
    return answer == f"{cid} {OUTSIDE_V4}" and seen_from == f"out {UPLINK_V4}"


def assert_all_gone(lab: Lab) -> None:
    assert [v for v in lab.veths() if v != "up0"] == []  # up0: the uplink to the outside host
    assert lab.endpoints() == [] and lab.nft_elements() == [] and nft_map_elements(lab) == []


def kernel_state(lab: Lab) -> tuple:
    """Our tables as the kernel holds them: every element with its comment, and the rules."""
    rules = []
    for family in ("inet", "bridge"):
        proc = sh("nft", "-j", "list", "table", family, "cnm", ns=lab.host, check=False)
        if proc.returncode == 0:
            rules += [json.dumps({k: v for k, v in item["rule"].items() if k != "handle"}, sort_keys=True)
                      for item in json.loads(proc.stdout)["nftables"] if "rule" in item]
    elements = sorted(json.dumps(e, sort_keys=True) for e in lab.nft_elements())
    maps = sorted(json.dumps(m, sort_keys=True) for m in nft_map_elements(lab))
    return tuple(sorted(rules)), tuple(elements), tuple(maps)


def wait_for(lab: Lab, wanted: tuple) -> float:
    """Seconds until our tables are `wanted` again (polled; fails after RESTORE_DEADLINE_S)."""
    start = time.monotonic()
    while kernel_state(lab) != wanted:
        assert time.monotonic() - start < RESTORE_DEADLINE_S, "not restored"
        time.sleep(0.01)
    return time.monotonic() - start


def owners_in(host: str) -> set[str]:
    """The endpoint ids our tables in netns `host` hold elements of (sets and maps)."""
    view = SimpleNamespace(host=host)
    comments = [c for *_, c in Lab.nft_elements(view)] + [m[-1] for m in nft_map_elements(view)]
    return {c.split()[0].split("@")[0] for c in comments if c}


def owners_in_store(store: Store, cid: str) -> str:
    """The endpoint id of `cid`'s eth0 on `store`'s network."""
    from cni_plugins.cnm.model import endpoint_id

    return endpoint_id(store.network, cid, "eth0")


def stale_errors(store: Store) -> list[str]:
    proc = store.cnmctl("doctor", "-f", "json")
    return [f["message"] for f in json.loads(proc.stdout)
            if f["check"] == "stale" and f["severity"] == "error"]


def test_next_add_restores_the_pods_a_flush_broke(lab, servers):
    """Issue 21 item 5: after `nft flush ruleset` the next ADD re-declared `table inet cnm`
    with its own elements only: the running pod's published port stayed refused and its
    masquerade gone. Now the commit that re-declares the tables puts back every live
    endpoint's elements of its store, in the same transaction."""
    outside = outside_host(lab)
    servers.start(outside, "out", f"tcp:{OUT_PORT}")
    store = Store(lab, "heal", "10.250.0.0/24", 8080)
    store.add("c1")
    servers.start(store.pods["c1"], "c1", "tcp:80")
    assert works(lab, outside, store, "c1")

    sh("nft", "flush", "ruleset", ns=lab.host)
    assert not works(lab, outside, store, "c1")
    store.add("c2", publish=False)  # another pod: its ADD declares the tables again
    assert works(lab, outside, store, "c1")
    owners = {c.split()[0].split("@")[0] for *_, c in lab.nft_elements()}
    assert len(owners) == 2  # c1's and c2's, both there
    assert not stale_errors(store)

    sh("nft", "flush", "ruleset", ns=lab.host)  # and a DEL declares them again too
    assert store.run("DEL", "c2", publish=False).rc == 0
    del store.pods["c2"]
    assert works(lab, outside, store, "c1")
    assert {c.split()[0].split("@")[0] for *_, c in lab.nft_elements()} == owners - {owners_in_store(store, "c2")}
    assert not stale_errors(store)
    store.delete_all()
    assert_all_gone(lab)


def test_doctor_reports_and_gc_restores_without_a_pod_command(lab, servers):
    """Issue 21 item 5: with our tables flushed, `cnmctl doctor` passed and `cnmctl gc` said
    nothing was stale (only STATUS said 51). Now doctor lists what live endpoints lost,
    STATUS says 51, and `cnmctl gc` puts it back (the table, then a flushed chain)."""
    outside = outside_host(lab)
    servers.start(outside, "out", f"tcp:{OUT_PORT}")
    store = Store(lab, "heal", "10.250.0.0/24", 8080)
    store.add("c1")
    servers.start(store.pods["c1"], "c1", "tcp:80")
    intact = kernel_state(lab)
    assert works(lab, outside, store, "c1") and not stale_errors(store)

    for breakage in (["flush", "ruleset"], ["flush", "chain", "inet", "cnm", "prerouting"],
                     ["delete", "chain", "inet", "cnm", "postrouting"]):
        sh("nft", *breakage, ns=lab.host)
        assert not works(lab, outside, store, "c1"), breakage
        errors = stale_errors(store)
        assert any(e.startswith("lost nft-layout inet cnm") for e in errors), (breakage, errors)
        if breakage[1] == "ruleset":
            assert any(e.startswith(f"lost nft-missing ") and "c1/eth0" in e for e in errors), errors
            assert any(e.startswith("lost nft-layout bridge cnm") for e in errors), errors
        status = exec_plugin("cnm-bridge", "STATUS", dict(store.conf(), cniVersion="1.1.0"), store.env,
                             host_netns=lab.host)
        assert status.rc != 0 and status.json["code"] == 51, status

        gc = store.cnmctl("gc", "--format", "json")
        assert gc.returncode == 0, gc
        restored = json.loads(gc.stdout)["restored"]
        assert any(a["kind"] == "nft-layout" for a in restored), gc.stdout
        assert kernel_state(lab) == intact, breakage
        assert works(lab, outside, store, "c1"), breakage
        assert not stale_errors(store)
        assert json.loads(store.cnmctl("gc", "--format", "json").stdout)["restored"] == []  # nothing left to do
    store.delete_all()
    assert_all_gone(lab)


def test_helper_restores_without_any_pod_command(lab, servers, tmp_path, capsys):
    """Issue 21 item 5: the resident helper watches nftables (netlink monitor) in the host
    netns of the callers it served and puts back the layout and every live element after a
    flushed ruleset, a deleted table, a deleted chain and a flushed chain, with no pod
    command. The latency printed is from the end of the breaking `nft` command to the
    tables being whole again, polled every 10 ms (reported, not asserted)."""
    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        lab.env["CNM_HELPER_SOCKET"] = sock
        outside = outside_host(lab)
        servers.start(outside, "out", f"tcp:{OUT_PORT}")
        store = Store(lab, "heal", "10.250.0.0/24", 8080)
        store.add("c1")
        servers.start(store.pods["c1"], "c1", "tcp:80")
        intact = kernel_state(lab)
        assert works(lab, outside, store, "c1")
        latencies = {}
        for breakage in (["flush", "ruleset"], ["delete", "table", "inet", "cnm"],
                         ["delete", "chain", "inet", "cnm", "prerouting"],
                         ["flush", "chain", "inet", "cnm", "postrouting"],
                         ["delete", "table", "bridge", "cnm"]):
            sh("nft", *breakage, ns=lab.host)
            latencies[" ".join(breakage)] = wait_for(lab, intact)
            assert works(lab, outside, store, "c1"), breakage
        with capsys.disabled():
            print("\nhelper restore latency (ms): " + ", ".join(f"{k}: {v * 1000:.0f}" for k, v in latencies.items()))
        log = (helper_dir / "cnmd.log").read_text()
        assert "firewall watch: restored" in log, log
        store.delete_all()
        assert_all_gone(lab)
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_stores_sharing_the_tables_keep_theirs(lab, servers, tmp_path, capsys):
    """Issue 21 item 5: several stores share one node's tables. A command of one store puts
    back only its own store's elements (never removing, replacing or re-tagging another's);
    the other store gets its own back from `cnmctl gc`; through the helper both come back
    with no command."""
    outside = outside_host(lab)
    servers.start(outside, "out", f"tcp:{OUT_PORT}")
    a = Store(lab, "heala", "10.250.0.0/24", 8080)
    b = Store(lab, "healb", "10.251.0.0/24", 8081, state_dir=str(tmp_path / "state-b"))
    a.add("c1")
    b.add("d1")
    servers.start(a.pods["c1"], "c1", "tcp:80")
    servers.start(b.pods["d1"], "d1", "tcp:80")
    intact = kernel_state(lab)
    assert works(lab, outside, a, "c1") and works(lab, outside, b, "d1")

    def tags() -> dict[str, int]:
        out: dict[str, int] = {}
        for *_, comment in lab.nft_elements():
            tag = "@" + comment.split()[0].split("@")[1]
            out[tag] = out.get(tag, 0) + 1
        return out

    per_store = tags()
    assert set(per_store) == {a.owner_tag(), b.owner_tag()}

    sh("nft", "flush", "ruleset", ns=lab.host)
    a.add("c2", publish=False)  # store a's command: a's pods back, b's not (not a's to know)
    assert works(lab, outside, a, "c1") and not works(lab, outside, b, "d1")
    assert b.owner_tag() not in tags()
    gc = b.cnmctl("gc", "--format", "json")
    assert gc.returncode == 0 and json.loads(gc.stdout)["restored"], gc.stdout
    assert works(lab, outside, a, "c1") and works(lab, outside, b, "d1")
    with_c2 = tags()
    assert with_c2[b.owner_tag()] == per_store[b.owner_tag()] and with_c2[a.owner_tag()] > per_store[a.owner_tag()]
    assert json.loads(a.cnmctl("gc", "--format", "json").stdout)["restored"] == []
    assert tags() == with_c2  # nothing of b's removed, replaced or duplicated by a's sweep
    a.run("DEL", "c2")
    del a.pods["c2"]
    assert kernel_state(lab) == intact

    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        for store in (a, b):  # one served command each: the helper now knows both stores here
            store.env["CNM_HELPER_SOCKET"] = sock
            r = exec_plugin("cnm-bridge", "STATUS", dict(store.conf(), cniVersion="1.1.0"), store.env,
                            host_netns=lab.host)
            assert r.rc == 0, r
        sh("nft", "flush", "ruleset", ns=lab.host)
        took = wait_for(lab, intact)
        with capsys.disabled():
            print(f"\nhelper restore latency, two stores after flush ruleset: {took * 1000:.0f} ms")
        assert works(lab, outside, a, "c1") and works(lab, outside, b, "d1")
        assert tags() == per_store
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    a.delete_all()
    b.delete_all()
    assert_all_gone(lab)


def test_port_published_on_two_networks_comes_back_for_the_first(lab, answering):
    """Issue 21 item 5, with the ports handover rule: a container publishing one host port on
    two networks records it on both, but only the endpoint that published first holds it.
    After a flush, `cnmctl gc` puts it back for that one (once), and the DEL handover still
    passes it to the other."""
    lab.outside = outside_host(lab)
    ns = lab.container()
    a, b = two_networks.network(lab, 1), two_networks.network(lab, 2)
    _, ip_a = two_networks.attach(lab, a, ns, "eth0")
    _, ip_b = two_networks.attach(lab, b, ns, "eth1")
    answering(ns, ip_a, ip_b)
    assert two_networks.who_answers(lab) == ip_a
    first = {two_networks.endpoint_of(lab, a, "eth0")}
    assert two_networks.owners(lab) == first

    sh("nft", "flush", "ruleset", ns=lab.host)
    assert two_networks.owners(lab) == set()
    store = Store(lab, "unused", "10.239.0.0/24", 1)  # for cnmctl with the lab's store
    gc = store.cnmctl("gc", "--format", "json")
    assert gc.returncode == 0 and json.loads(gc.stdout)["restored"], gc.stdout
    assert two_networks.owners(lab) == first
    assert two_networks.who_answers(lab) == ip_a

    assert lab.run("DEL", a, ns, cid="c1", ifname="eth0").rc == 0
    assert two_networks.who_answers(lab) == ip_b
    assert lab.run("DEL", b, ns, cid="c1", ifname="eth1").rc == 0
    assert_all_gone(lab)


def test_a_store_used_from_another_netns_never_puts_its_pods_there(lab, servers, tmp_path):
    """Issue 21 item 5, the restore's bound: a store's records say which elements its pods
    need, not in which network namespace. One store with a pod in netns H1 and another in H2:
    re-declaring the tables in H2 (the first ADD there), `cnmctl gc` run in H2 and the helper
    watching H2 each put back in H2 only the pod that lives there (its host veth is there),
    never H1's pod's elements (they came along into H2 before); H1 keeps working throughout."""
    outside = outside_host(lab)
    servers.start(outside, "out", f"tcp:{OUT_PORT}")
    here = Store(lab, "heal", "10.250.0.0/24", 8080)
    here.add("c1")
    servers.start(here.pods["c1"], "c1", "tcp:80")
    c1 = owners_in(lab.host)
    assert len(c1) == 1 and works(lab, outside, here, "c1")

    h2 = lab.netns("cnmh")
    there = Store(lab, "healo", "10.251.0.0/24", 8081, host=h2)  # the same store (lab.env's)
    there.add("d1")  # the first ADD in H2 declares our tables there
    d1 = owners_in(h2)
    assert len(d1) == 1 and not d1 & c1, (d1, c1)

    sh("nft", "flush", "ruleset", ns=h2)
    assert not any(e.startswith("lost nft-missing") and "c1/eth0" in e for e in stale_errors(there))
    gc = there.cnmctl("gc", "--format", "json")
    assert gc.returncode == 0 and json.loads(gc.stdout)["restored"], gc.stdout
    assert owners_in(h2) == d1
    assert owners_in(lab.host) == c1 and works(lab, outside, here, "c1")

    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        there.env = dict(there.env, CNM_HELPER_SOCKET=sock)
        r = exec_plugin("cnm-bridge", "STATUS", dict(there.conf(), cniVersion="1.1.0"), there.env, host_netns=h2)
        assert r.rc == 0, r  # served in H2: the helper watches the store there
        sh("nft", "flush", "ruleset", ns=h2)
        deadline = time.monotonic() + RESTORE_DEADLINE_S
        while not owners_in(h2):  # d1's and any of c1's come back in the same transaction
            assert time.monotonic() < deadline, "not restored"
            time.sleep(0.01)
        assert owners_in(h2) == d1
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    assert owners_in(lab.host) == c1 and works(lab, outside, here, "c1")
    there.delete_all()
    assert owners_in(h2) == set()
    here.delete_all()
    assert_all_gone(lab)


def test_helper_lets_go_of_a_namespace_it_no_longer_serves(netns, cnm_env, tmp_path):
    """The firewall watch holds a netlink socket in each host netns it served, which keeps
    that namespace alive: once the namespace is deleted and nothing else holds it, the watch
    lets go (within its housekeeping period) and the kernel frees it. Seen by a veth whose
    other end was in it: it goes only when the namespace really does. No socket stays open."""
    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        gone, witness = netns("cnmh"), netns("cnmw")
        peer = unique("cnw")
        sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "cnw0", "netns", gone, ns=witness)
        conf = {"cniVersion": "1.1.0", "name": unique("healns", 30), "type": "cnm-bridge", "bridge": unique("cnb"),
                "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"),
                         "ranges": [[{"subnet": "10.252.0.0/24"}]]}}
        env = dict(cnm_env, CNM_HELPER_SOCKET=sock)
        for host in (witness, gone):  # the first opens what the store keeps open, and a monitor
            r = exec_plugin("cnm-bridge", "STATUS", conf, env, host_netns=host)
            assert r.rc == 0, r
            if host == witness:
                _, fds_before = quiet(proc.pid)
        _, fds_serving = quiet(proc.pid)
        assert fds_serving == fds_before + 1  # the watch's monitor socket in that namespace

        sh("ip", "netns", "del", os.path.basename(gone))
        deadline = time.monotonic() + 60  # a poll bound (housekeeping runs every 10 s)
        while peer in sh("ip", "-o", "link", "show", ns=witness).stdout:
            assert time.monotonic() < deadline, "the deleted namespace is still held"
            time.sleep(0.2)
        assert quiet(proc.pid)[1] == fds_before
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
