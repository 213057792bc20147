"""cnm-container: a container joins the sandbox (network stack) of another container.

Real namespaces, the real bin/ executables, assertions on the kernel and the store.
Sandboxes here are made by cnm-none and cnm-host; the bridge cases are in
test_container_bridge.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

from support.common import unique, pin_names, pin_path

V = "1.0.0"


# ---- helpers ---------------------------------------------------------------------------
def none_conf(name="lo", version=V):
    return {"cniVersion": version, "name": name, "type": "cnm-none"}


def host_conf(name="hostnet", version=V):
    return {"cniVersion": version, "name": name, "type": "cnm-host"}


def join_conf(target=None, name="shared", version=V, **extra):
    conf = {"cniVersion": version, "name": name, "type": "cnm-container", **extra}
    if target is not None:
        conf["container"] = target
    return conf


def records(env) -> dict:
    """The store's sandboxes and endpoints, as plain tuples (empty when no store yet)."""
    path = os.path.join(env["CNM_STATE_DIR"], "cnm.db")
    if not os.path.exists(path):
        return {"sandboxes": [], "endpoints": []}
    db = sqlite3.connect(path)
    try:
        return {
            "sandboxes": db.execute("SELECT id, pin FROM sandboxes ORDER BY id").fetchall(),
            "endpoints": db.execute(
                "SELECT container_id, network, ifname, driver, active FROM endpoints ORDER BY container_id, network"
            ).fetchall(),
        }
    finally:
        db.close()


def pins(env) -> list[str]:
    return pin_names(env)




def is_mounted(path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def in_netns(path, *cmd, timeout=20, check=True):
    """Run a command inside the netns at `path` (a runtime's path or our pin)."""
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True,
                          timeout=timeout, check=check)


def lo_state(path) -> str:
    out = in_netns(path, "ip", "-j", "link", "show", "lo").stdout
    return "UP" if "UP" in json.loads(out)[0]["flags"] else "DOWN"


def err(run):
    assert run.rc != 0, run
    assert run.json is not None and "code" in run.json, run
    assert b"Traceback" not in run.stderr, run.stderr
    return run.json


SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(float(sys.argv[3]))
print('ready', flush=True)
try:
    while True:
        c, _ = s.accept(); c.sendall(b'hello from ' + sys.argv[4].encode()); c.close()
except socket.timeout:
    pass
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode())
"""


class Servers:
    """TCP servers in namespaces, bounded in time, killed in teardown."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, ns_path, addr, port, tag, lifetime=60):
        return self.spawn(ns_path, SERVER, addr, port, lifetime, tag)

    def spawn(self, ns_path, code, *args):
        """python3 -c `code` in the netns; it prints 'ready' once it listens."""
        proc = subprocess.Popen(
            ["nsenter", f"--net={ns_path}", "python3", "-c", code, *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        return proc

    def sleeper(self, ns_path, lifetime=60):
        """A process living in the netns (a container's process): it holds the netns too,
        and /proc/<pid>/ns/net is another path to it."""
        proc = subprocess.Popen(["nsenter", f"--net={ns_path}", "sleep", str(lifetime)])
        self.procs.append(proc)
        want = os.stat(ns_path).st_ino
        for _ in range(200):  # until nsenter has entered the netns
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want:
                return proc
            time.sleep(0.01)
        raise AssertionError(f"process did not enter {ns_path}")

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.close()


def connect(ns_path, addr, port) -> str:
    return in_netns(ns_path, "python3", "-c", CLIENT, addr, str(port)).stdout.strip()


@pytest.fixture
def fake_host(netns):
    """A throwaway netns that plays the host: the plugins run in it (exec_plugin host_netns),
    so "the host netns" is this one, with links, an address and a default route of its own."""
    path = netns("cnmh")
    name = os.path.basename(path)
    in_netns(path, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")  # no tentative addresses
    for cmd in (["link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p"],
                ["link", "set", "uplink0p", "up"], ["link", "set", "uplink0", "up"],
                ["link", "set", "lo", "up"], ["addr", "add", "10.252.0.2/24", "dev", "uplink0"],
                ["route", "add", "default", "via", "10.252.0.1"]):
        subprocess.run(["ip", "-n", name, *cmd], check=True)
    for _ in range(200):  # settle: carrier up and the link-local addresses in place
        state = host_state(path)
        if all("LOWER_UP" in link[1] for link in state[0]) and sum(len(link[4]) for link in state[0]) >= 5:
            break
        time.sleep(0.02)
    return path


def host_state(path) -> tuple:
    """What a joiner could change on the (fake) host: links, addresses, routes."""
    def ip(*args):
        return json.loads(in_netns(path, "ip", "-j", *args).stdout)

    links = sorted(
        (l["ifname"], sorted(l["flags"]), l.get("mtu"), l.get("address"),
         sorted((a["local"], a["prefixlen"]) for a in l.get("addr_info", [])))
        for l in ip("addr")
    )
    return (links, ip("route"), ip("-6", "route"))


# ---- joining a none sandbox ----------------------------------------------------------------
@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_join_none_sandbox_reports_its_stack(run_plugin, netns, cnm_env, version):
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    add_a = run_plugin("cnm-none", "ADD", none_conf(version=version), container_id=a, netns=ns, ifname="lo")
    assert add_a.rc == 0, add_a
    add_b = run_plugin("cnm-container", "ADD", join_conf(a, version=version), container_id=b, netns=ns, ifname="eth0")
    assert add_b.rc == 0, add_b
    assert add_b.json["cniVersion"] == version
    if version == "0.2.0":
        assert add_b.json["ip4"]["ip"] == "127.0.0.1/8"
    else:
        assert add_b.json["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ns}]
        assert {ip["address"] for ip in add_b.json["ips"]} >= {"127.0.0.1/8"}
    assert lo_state(ns) == "UP"
    rec = records(cnm_env)
    assert [(e[0], e[3], e[4]) for e in rec["endpoints"]] == sorted([(a, "null", 1), (b, "container", 1)])
    assert len(rec["sandboxes"]) == 1 and rec["sandboxes"][0][0] == a  # one sandbox, two members
    for cid, plugin, conf, ifname in ((b, "cnm-container", join_conf(a, version=version), "eth0"),
                                      (a, "cnm-none", none_conf(version=version), "lo")):
        assert run_plugin(plugin, "DEL", conf, container_id=cid, netns=ns, ifname=ifname).rc == 0
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []}
    assert pins(cnm_env) == []


def test_sandbox_outlives_its_first_container_through_the_pin(run_plugin, netns, cnm_env, servers):
    """The first container leaves and its runtime removes its netns path: the joiner keeps
    the stack (pinned by the sandbox), and the last DEL, via cnm-container, removes it all."""
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    pin = pin_path(cnm_env, a)
    assert is_mounted(pin)  # pinned from the first endpoint on
    assert run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0

    servers.start(ns, "127.0.0.1", 8080, "web")  # A's web service on localhost
    assert connect(ns, "127.0.0.1", 8080) == "hello from web"  # B's proxy reaches it

    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert lo_state(ns) == "UP"  # kept for B
    assert set(records(cnm_env)["endpoints"]) == {(a, "lo", "lo", "null", 0), (b, "shared", "eth0", "container", 1)}
    subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)  # A's runtime unmounts its path
    assert not os.path.exists(ns) and is_mounted(pin)
    assert lo_state(pin) == "UP"
    servers.start(pin, "127.0.0.1", 8081, "still-here")
    assert connect(pin, "127.0.0.1", 8081) == "hello from still-here"

    # B's DEL: its runtime's path is gone too (CNI_NETNS may name nothing on DEL).
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert not is_mounted(pin) and pins(cnm_env) == []
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []}
    # A second DEL of either is a no-op success.
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0


def test_last_del_tears_down_through_recorded_driver(run_plugin, netns, cnm_env, servers):
    """A's null endpoint is torn down (lo down) by B's cnm-container DEL, not before."""
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert lo_state(ns) == "UP"
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert lo_state(ns) == "DOWN"  # the null driver's leave ran, once the last member left
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []} and pins(cnm_env) == []


def test_joiner_leaving_first_keeps_the_owner_and_can_rejoin(run_plugin, netns, cnm_env):
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert records(cnm_env)["endpoints"] == [(a, "lo", "lo", "null", 1)]  # a membership owns nothing: gone
    assert lo_state(ns) == "UP" and pins(cnm_env) == [a]
    again = run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0")
    assert again.rc == 0, again
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []} and pins(cnm_env) == []


def test_owner_rejoins_its_kept_stack(run_plugin, netns, cnm_env):
    """A's endpoint, kept inactive for B, is taken back by an ADD of A in the same netns."""
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    first = run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo")
    assert run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    elsewhere = err(run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=netns(), ifname="lo"))
    assert elsewhere["code"] == 102 and b in elsewhere["details"]  # held for B: not silently replaced
    back = run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo")
    assert back.rc == 0 and back.json == first.json
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert lo_state(ns) == "UP"  # A is an active member again: nothing torn down
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []} and pins(cnm_env) == []


def test_join_through_another_joiner_and_cni_args_override(run_plugin, netns, cnm_env):
    """C names B (itself a joiner) through CNI_ARGS CNM_CONTAINER, overriding the config key."""
    ns = netns()
    a, b, c = unique("webA"), unique("proxyB"), unique("sideC")
    add_a = run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo")
    assert run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    templated = join_conf("not-this-one")
    add_c = run_plugin("cnm-container", "ADD", templated, container_id=c, netns=ns, ifname="eth0",
                       args=f"IgnoreUnknown=1;CNM_CONTAINER={b}")
    assert add_c.rc == 0, add_c
    assert add_c.json["interfaces"] == add_a.json["interfaces"] and add_c.json["ips"] == add_a.json["ips"]
    no_key = run_plugin("cnm-container", "ADD", join_conf(None), container_id=unique("d"), netns=ns,
                        ifname="eth0", args=f"CNM_CONTAINER={a}")
    assert no_key.rc == 0, no_key
    assert len(records(cnm_env)["sandboxes"]) == 1


# ---- refusals: clean errors, nothing changed ---------------------------------------------------
def test_missing_or_invalid_container_key(run_plugin, netns, cnm_env):
    ns = netns()
    missing = err(run_plugin("cnm-container", "ADD", join_conf(None), container_id=unique("b"), netns=ns, ifname="eth0"))
    assert missing["code"] == 7 and "container" in missing["msg"] and "CNM_CONTAINER" in missing["details"]
    for bad in (42, "", "../x", ["a"]):
        e = err(run_plugin("cnm-container", "ADD", join_conf(bad), container_id=unique("b"), netns=ns, ifname="eth0"))
        assert e["code"] == 7 and "container" in e["msg"], e
    me = unique("self")
    e = err(run_plugin("cnm-container", "ADD", join_conf(me), container_id=me, netns=ns, ifname="eth0"))
    assert e["code"] == 7
    assert records(cnm_env)["endpoints"] == [] and pins(cnm_env) == []


def test_unknown_container_fails_cleanly(run_plugin, netns, cnm_env):
    ns = netns()
    a = unique("webA")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    before = records(cnm_env)
    ghost = unique("ghost")
    e = err(run_plugin("cnm-container", "ADD", join_conf(ghost), container_id=unique("b"), netns=ns, ifname="eth0"))
    assert e["code"] not in (3,) and e["code"] == 7
    assert ghost in e["msg"] and "no sandbox" in e["msg"]
    assert records(cnm_env) == before and pins(cnm_env) == [a]
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0


def test_wrong_netns_fails_cleanly_naming_both(run_plugin, netns, cnm_env, servers):
    ns_a, ns_other = netns(), netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns_a, ifname="lo").rc == 0
    before = records(cnm_env)
    e = err(run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns_other, ifname="eth0"))
    assert e["code"] == 102
    assert ns_other in e["details"] and ns_a in e["details"]
    assert records(cnm_env) == before and pins(cnm_env) == [a]
    assert lo_state(ns_other) == "DOWN"
    # The same netns under another path (identity, not path string): accepted.
    alias = f"/proc/{servers.sleeper(ns_a).pid}/ns/net"
    ok = run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=alias, ifname="eth0")
    assert ok.rc == 0, ok
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=alias, ifname="eth0").rc == 0
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns_a, ifname="lo").rc == 0


def test_joiner_already_elsewhere_conflicts(run_plugin, netns, cnm_env):
    ns_a, ns_b = netns(), netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns_a, ifname="lo").rc == 0
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=b, netns=ns_b, ifname="lo").rc == 0
    before = records(cnm_env)
    e = err(run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns_a, ifname="eth0"))
    assert e["code"] == 102 and b in e["details"]
    assert records(cnm_env) == before
    for cid, ns in ((a, ns_a), (b, ns_b)):
        assert run_plugin("cnm-none", "DEL", none_conf(), container_id=cid, netns=ns, ifname="lo").rc == 0
    assert pins(cnm_env) == []


# ---- the host sandbox and the host-netns guard -----------------------------------------------
def test_join_host_sandbox_changes_nothing(run_plugin, cnm_env, fake_host):
    before = host_state(fake_host)
    a, b = unique("hostA"), unique("proxyB")
    on_host = dict(netns=fake_host, host_netns=fake_host, ifname="eth0")
    add_a = run_plugin("cnm-host", "ADD", host_conf(), container_id=a, **on_host)
    assert add_a.rc == 0, add_a
    assert sorted(i["name"] for i in add_a.json["interfaces"]) == ["uplink0", "uplink0p"]
    add_b = run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, **on_host)
    assert add_b.rc == 0, add_b  # the host netns, and no code 8: it IS the named sandbox's netns
    assert add_b.json == add_a.json
    assert [ip["address"] for ip in add_b.json["ips"]] == ["10.252.0.2/24"]
    assert records(cnm_env)["sandboxes"] == [("host", "")]  # no pin for the host's own stack
    chk = run_plugin("cnm-container", "CHECK", dict(join_conf(a), prevResult=add_b.json), container_id=b, **on_host)
    assert chk.rc == 0, chk
    assert host_state(fake_host) == before
    assert run_plugin("cnm-host", "DEL", host_conf(), container_id=a, **on_host).rc == 0
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, **on_host).rc == 0
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []} and pins(cnm_env) == []
    assert host_state(fake_host) == before


def test_host_netns_guard(run_plugin, netns, cnm_env, fake_host):
    """Code 8 in the host netns, before any change, unless the named sandbox IS the host's."""
    ns = netns()
    a = unique("webA")
    on_host = dict(netns=fake_host, host_netns=fake_host, ifname="eth0")
    e = err(run_plugin("cnm-container", "ADD", join_conf(unique("ghost")), container_id=unique("b"), **on_host))
    assert e["code"] == 8  # an unknown container in the host netns: the guard, not "no sandbox"
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo",
                      host_netns=fake_host).rc == 0
    before = records(cnm_env)
    e = err(run_plugin("cnm-container", "ADD", join_conf(a), container_id=unique("b"), **on_host))
    assert e["code"] == 8
    # With the override the guard steps aside, and the identity check still refuses.
    e = err(run_plugin("cnm-container", "ADD", join_conf(a), container_id=unique("b"), **on_host,
                       extra_env={"CNI_NETNS_OVERRIDE": "1"}))
    assert e["code"] == 102
    assert records(cnm_env) == before
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo",
                      host_netns=fake_host).rc == 0


# ---- CHECK --------------------------------------------------------------------------------------
def test_check_membership_identity_and_the_sandbox_endpoints(run_plugin, netns, cnm_env):
    ns, other = netns(), netns()
    a, b = unique("webA"), unique("proxyB")
    assert run_plugin("cnm-none", "ADD", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    add_b = run_plugin("cnm-container", "ADD", join_conf(a), container_id=b, netns=ns, ifname="eth0")
    conf = dict(join_conf(a), prevResult=add_b.json)

    def check(netns=ns, cid=b, c=conf):
        return run_plugin("cnm-container", "CHECK", c, container_id=cid, netns=netns, ifname="eth0")

    assert check().rc == 0
    assert err(check(cid=unique("nobody")))["code"] == 103  # not a member
    assert err(check(netns=other))["code"] == 103  # another netns
    bogus = dict(conf, prevResult=dict(add_b.json, ips=[{"address": "10.99.0.5/24", "interface": 0}]))
    assert err(check(c=bogus))["code"] == 103  # prevResult's address is not the sandbox's
    # A's endpoint is checked through the null driver: lo down is a failure seen by B's CHECK.
    in_netns(ns, "ip", "link", "set", "lo", "down")
    failed = err(check())
    assert failed["code"] == 103 and "loopback" in failed["msg"]
    in_netns(ns, "ip", "link", "set", "lo", "up")
    # After A left, B's stack is still A's (kept): CHECK passes.
    assert run_plugin("cnm-none", "DEL", none_conf(), container_id=a, netns=ns, ifname="lo").rc == 0
    assert check().rc == 0
    assert run_plugin("cnm-container", "DEL", join_conf(a), container_id=b, netns=ns, ifname="eth0").rc == 0
    assert err(check())["code"] == 103
    assert pins(cnm_env) == []


# ---- GC -----------------------------------------------------------------------------------------
def test_gc_keeps_what_members_still_share(run_plugin, netns, cnm_env):
    ns = netns()
    a, b = unique("webA"), unique("proxyB")
    lo11, join11 = none_conf(version="1.1.0"), join_conf(a, version="1.1.0")
    assert run_plugin("cnm-none", "ADD", lo11, container_id=a, netns=ns, ifname="lo").rc == 0
    assert run_plugin("cnm-container", "ADD", join11, container_id=b, netns=ns, ifname="eth0").rc == 0
    # The runtime GCs network "lo" with A gone: A's endpoint is held by B, so it stays.
    gc = run_plugin("cnm-none", "GC", dict(lo11, **{"cni.dev/valid-attachments": []}))
    assert gc.rc == 0, gc
    assert lo_state(ns) == "UP"
    assert set(records(cnm_env)["endpoints"]) == {(a, "lo", "lo", "null", 0), (b, "shared", "eth0", "container", 1)}
    # GC of the joiners' network with B gone: the last member leaves, everything goes.
    gc = run_plugin("cnm-container", "GC", dict(join11, **{"cni.dev/valid-attachments": []}))
    assert gc.rc == 0, gc
    assert lo_state(ns) == "DOWN"
    assert records(cnm_env) == {"sandboxes": [], "endpoints": []} and pins(cnm_env) == []
