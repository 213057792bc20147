"""GC (CNI 1.1) for every plugin type, orphan sweeping, the node-wide `cnmctl gc`, and
convergence after a (simulated) reboot. Real executables in a throwaway host netns."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess

import pytest

from support.bridge import Lab, sh
from support.common import BIN, exec_plugin, in_netns, pin_dir, pin_names, pin_path, pin_paths, store_id, unique


def pins(lab: Lab) -> list[str]:
    return pin_names(lab.env)


def gc(lab: Lab, conf: dict, valid=None, key="cni.dev/valid-attachments", plugin=""):
    conf = dict(conf, cniVersion="1.1.0")
    if valid is not None:
        conf[key] = [{"containerID": c, "ifname": i} for c, i in valid]
    return lab.run("GC", conf, plugin=plugin or conf["type"])


def cnmctl_gc(lab: Lab, fmt: str = "json"):
    env = dict(lab.env)
    proc = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), "gc", "--format", fmt],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def bridge_conf(lab: Lab, **keys) -> dict:
    return lab.conf(version="1.1.0", ipMasq=True, macspoofchk=True, isGateway=True, **keys)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_bridge_gc_removes_only_invalid_attachments(lab, key):
    conf = bridge_conf(lab)
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, c1, cid="c1")
    lab.add(conf, c2, cid="c2")
    before = lab.nft_elements()
    r = gc(lab, conf, [("c1", "eth0")], key=key)
    assert r.rc == 0, r
    assert [e[1:] for e in lab.endpoints()] == [("c1", "eth0")]
    assert len(lab.veths()) == 1 and len(lab.leases()) == 1
    assert 0 < len(lab.nft_elements()) < len(before)
    assert len(pins(lab)) == 1
    assert lab.link("eth0", ns=c1) is not None and lab.link("eth0", ns=c2) is None
    assert gc(lab, conf, []).rc == 0
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_gc_without_list_removes_nothing_and_says_why(lab, tmp_path):
    conf = bridge_conf(lab)
    lab.add(conf, lab.container(), cid="c1")
    log = tmp_path / "cnm.log"
    r = gc(lab, dict(conf, logFile=str(log)))
    assert r.rc == 0 and r.stdout == b"", r
    assert "valid-attachments" in log.read_text()  # the event log (and stderr when not via the helper)
    if lab.env.get("CNM_HELPER_SOCKET") in (None, "", "off"):
        assert b"valid-attachments" in r.stderr
    assert len(lab.endpoints()) == 1 and len(lab.veths()) == 1 and len(lab.leases()) == 1


def recording_ipam(lab: Lab, tmp_path) -> str:
    """An external IPAM on CNI_PATH (exec'd, never in-process) that logs each command and
    is cnm-ipam underneath; returns its log file."""
    directory = tmp_path / "extbin"
    directory.mkdir()
    log = tmp_path / "ipam.log"
    script = directory / "rec-ipam"
    script.write_text(f'#!/bin/sh\necho "$CNI_COMMAND" >> {log}\nexec {BIN}/cnm-ipam\n')
    script.chmod(0o755)
    lab.env["CNI_PATH"] = f"{directory}:{lab.env['CNI_PATH']}"
    lab.ipam_type = "rec-ipam"
    return str(log)


def test_bridge_gc_forwards_to_delegated_ipam(netns, cnm_env, tmp_path):
    """GC reaches an exec'd IPAM, which releases a lease that has no endpoint (one an IPAM
    ADD made on its own)."""
    lab = Lab(netns, cnm_env, tmp_path)
    log = recording_ipam(lab, tmp_path)
    conf = bridge_conf(lab)
    lab.add(conf, lab.container(), cid="c1")
    ghost = exec_plugin("cnm-ipam", "ADD", dict(conf, type="cnm-ipam"), lab.env,
                        container_id="ghost", netns="/x", ifname="eth0")
    assert ghost.rc == 0, ghost
    assert len(lab.leases()) == 2
    assert gc(lab, conf, [("c1", "eth0")]).rc == 0
    assert len(lab.leases()) == 1
    assert open(log).read().split() == ["ADD", "VERSION", "GC"]  # GC only to an IPAM whose VERSION lists 1.1.0


@pytest.mark.parametrize("plugin", ["cnm-none", "cnm-container"])
def test_gc_other_plugin_types(lab, plugin):
    none = {"cniVersion": "1.1.0", "name": lab.network, "type": "cnm-none"}
    c1, c2 = lab.container(), lab.container()
    lab.add(none, c1, cid="c1")
    lab.add(none, c2, cid="c2")
    if plugin == "cnm-container":
        joined = {"cniVersion": "1.1.0", "name": lab.network + "j", "type": "cnm-container", "container": "c2"}
        lab.add(joined, c2, cid="j2")
        assert gc(lab, joined, []).rc == 0  # the joiner's membership goes
        assert {e[1] for e in lab.endpoints()} == {"c1", "c2"}
    assert gc(lab, none, [("c1", "eth0")]).rc == 0
    assert [e[1:] for e in lab.endpoints()] == [("c1", "eth0")]
    assert len(pins(lab)) == 1
    assert gc(lab, none, []).rc == 0
    assert lab.endpoints() == [] and pins(lab) == []


def test_gc_host_plugin(lab):
    conf = {"cniVersion": "1.1.0", "name": lab.network, "type": "cnm-host"}
    lab.add(conf, lab.host, cid="h1")
    assert gc(lab, conf, [("h1", "eth0")]).rc == 0
    assert len(lab.endpoints()) == 1
    assert gc(lab, conf, []).rc == 0
    assert lab.endpoints() == []


_orphan_addresses = itertools.count(100)


def tag_of(lab: Lab) -> str:
    return store_id(lab.env)[:12]


def make_orphans(lab: Lab, tag: str) -> dict:
    """A veth and an nft element tagged `<endpoint id>@<tag>` whose endpoint has no record
    (tag: this store's, another store's, or "" for an older version's untagged ones), and,
    for this store's tag, a pin in its pin directory that no sandbox records."""
    endpoint = os.urandom(12).hex()
    owner = f"{endpoint}@{tag}" if tag else endpoint
    veth = "cnm" + endpoint[:12]
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", unique("cnp"), ns=lab.host)
    sh("ip", "link", "set", veth, "alias", owner, ns=lab.host) if tag else None
    address = f"10.250.0.{next(_orphan_addresses)}"  # distinct: one key is one element
    doc = {"nftables": [
        {"add": {"table": {"family": "inet", "name": "cnm"}}},
        {"add": {"set": {"family": "inet", "table": "cnm", "name": "masq4", "type": "ipv4_addr"}}},
        {"add": {"element": {"family": "inet", "table": "cnm", "name": "masq4",
                             "elem": [{"elem": {"val": address, "comment": owner}}]}}},
    ]}
    subprocess.run(["nsenter", f"--net={lab.host}", "--", "nft", "-j", "-f", "-"], input=json.dumps(doc).encode(),
                   check=True, capture_output=True)
    pin = ""
    if tag == tag_of(lab):
        os.makedirs(pin_dir(lab.env), exist_ok=True)
        pin = os.path.join(pin_dir(lab.env), "orphan-pin")
        open(pin, "w").close()
    return {"veth": veth, "owner": owner, "pin": pin}


def test_gc_sweeps_orphans(lab):
    """Only what is provably this store's goes (issue 20, finding 1): veths and elements tagged
    with another store's id, or an older version's untagged ones, stay."""
    conf = bridge_conf(lab)
    c1 = lab.container()
    lab.add(conf, c1, cid="c1")
    kept = set(lab.veths())
    ours = make_orphans(lab, tag_of(lab))
    theirs = make_orphans(lab, "0123456789ab")
    untagged = make_orphans(lab, "")
    assert ours["veth"] in lab.veths()
    assert gc(lab, conf, [("c1", "eth0")]).rc == 0
    after = set(lab.veths())
    assert kept <= after and {theirs["veth"], untagged["veth"]} <= after and ours["veth"] not in after
    owners = {e[3] for e in lab.nft_elements()}
    assert ours["owner"] not in owners and {theirs["owner"], untagged["owner"]} <= owners
    assert not os.path.exists(ours["pin"])
    assert len(lab.endpoints()) == 1 and len(lab.leases()) == 1


def unpin_all(lab: Lab) -> None:
    for path in pin_paths(lab.env):
        subprocess.run(["umount", path], capture_output=True)
        os.unlink(path)


def test_cnmctl_gc_reconciles_node(lab):
    conf = bridge_conf(lab)
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, c1, cid="c1")
    lab.add(conf, c2, cid="c2")
    # c2's netns and pin vanish behind our back (the veth goes with the netns)
    path = pin_path(lab.env, "c2")
    subprocess.run(["umount", path], check=True)
    os.unlink(path)
    subprocess.run(["ip", "netns", "del", os.path.basename(c2)], check=True)
    orphans = make_orphans(lab, tag_of(lab))
    # A lease this store did not write (host-local's, of a pod from before a migration): kept.
    foreign_lease = os.path.join(lab.data_dir, lab.network, "10.250.0.200")
    with open(foreign_lease, "w") as f:
        f.write("ghost\r\neth0")
    proc = cnmctl_gc(lab)
    assert proc.returncode == 0, proc
    report = json.loads(proc.stdout)
    kinds = {a["kind"] for a in report["removed"]}
    assert {"release", "veth", "nft", "pin"} <= kinds, report
    assert report["errors"] == []
    assert [e[1] for e in lab.endpoints()] == ["c1"]
    assert len(lab.leases()) == 2 and len(lab.veths()) == 1
    assert os.path.exists(foreign_lease)
    assert not os.path.exists(orphans["pin"])
    assert pins(lab) == ["c1"]
    assert lab.link("eth0", ns=c1) is not None
    # a second run finds nothing to remove; the table says so, and what it keeps
    proc = cnmctl_gc(lab, "table")
    assert proc.returncode == 0 and proc.stdout.startswith("nothing stale\n"), proc
    assert "foreign" in proc.stdout and "10.250.0.200" in proc.stdout


def simulate_reboot(lab: Lab, containers: list[str], same_boot: bool) -> None:
    """Every namespace and kernel object of ours goes; the store and lease files stay."""
    unpin_all(lab)
    for c in containers:
        subprocess.run(["ip", "netns", "del", os.path.basename(c)], check=True)
    for link in lab.veths():
        sh("ip", "link", "del", link, ns=lab.host, check=False)
    for family in ("inet", "bridge"):
        sh("nft", "delete", "table", family, "cnm", ns=lab.host, check=False)
    if not same_boot:
        with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
            db.execute("UPDATE meta SET value='an-earlier-boot' WHERE key='boot_id'")


@pytest.mark.parametrize("same_boot", [False, True], ids=["new-boot", "same-boot-pins-gone"])
@pytest.mark.parametrize("how", ["add", "gc"])
def test_reboot_converges(lab, same_boot, how):
    """A two-address range, full before the reboot: the first ADD (or a GC) after it
    releases the vanished endpoints, so the range has room again."""
    conf = bridge_conf(lab, ipam=lab.ipam({"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10",
                                            "rangeEnd": "10.250.0.11"}))
    old = [lab.container(), lab.container()]
    got = {lab.add(conf, c, cid=f"old{i}")["ips"][0]["address"] for i, c in enumerate(old)}
    assert len(got) == 2
    full = lab.run("ADD", conf, lab.container(), cid="extra")
    assert full.rc != 0  # exhausted
    simulate_reboot(lab, old, same_boot)
    if how == "gc":
        assert gc(lab, conf, [("new", "eth0")]).rc == 0
        assert lab.endpoints() == [] and lab.leases() == [] and pins(lab) == []
    new = lab.container()
    result = lab.add(conf, new, cid="new")
    assert result["ips"][0]["address"] in got
    assert [e[1] for e in lab.endpoints()] == ["new"]
    assert len(lab.leases()) == 1
    assert lab.run("DEL", conf, new, cid="new").rc == 0
    # the runtime's own DELs for the old containers come late: they succeed, change nothing
    for i, c in enumerate(old):
        assert lab.run("DEL", conf, c, cid=f"old{i}").rc == 0
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_pin_gone_but_netns_alive_is_kept(lab):
    """A pin made in another mount namespace is invisible here: the runtime's own path still
    names the live netns, so neither an ADD nor cnmctl gc takes that endpoint away."""
    conf = bridge_conf(lab)
    c1 = lab.container()
    lab.add(conf, c1, cid="c1")
    unpin_all(lab)
    lab.add(conf, lab.container(), cid="c2")
    proc = cnmctl_gc(lab)
    assert proc.returncode == 0, proc
    assert not [a for a in json.loads(proc.stdout)["removed"] if a["kind"] == "endpoint"]
    assert sorted(e[1] for e in lab.endpoints()) == ["c1", "c2"]
    assert len(lab.addrs("eth0", c1)) == 1 and len(lab.veths()) == 2


# ---- ADD's bounded vanished check (reconcile.VanishedCheck) ---------------------------------
def none_pods(lab: Lab, count: int, prefix: str = "a") -> list[tuple[str, str]]:
    """`count` cnm-none pods: sandboxes (pinned) with no address, more than one round."""
    conf = {"cniVersion": "1.1.0", "name": lab.network + "n", "type": "cnm-none"}
    pods = []
    for i in range(count):
        ns = lab.container()
        lab.add(conf, ns, cid=f"{prefix}{i:02d}", ifname="lo")
        pods.append((f"{prefix}{i:02d}", ns))
    return pods


def del_none_pods(lab: Lab, pods) -> None:
    conf = {"cniVersion": "1.1.0", "name": lab.network + "n", "type": "cnm-none"}
    for cid, ns in pods:
        assert lab.run("DEL", conf, ns, cid=cid, ifname="lo").rc == 0


def pin_of(lab: Lab, cid: str) -> str:
    return pin_path(lab.env, cid)


@pytest.mark.parametrize("remove", [False, True], ids=["unmounted", "unmounted-and-removed"])
def test_pins_gone_behind_our_back_range_full(lab, remove):
    """More sandboxes than one ADD looks at; the full range's pods lose their pins (an admin's
    umount, or /run's pins gone) and their netns: the next ADD still gets a released address
    (in a helper, whose earlier ADDs judged those sandboxes pinned)."""
    conf = bridge_conf(lab, ipam=lab.ipam({"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10",
                                            "rangeEnd": "10.250.0.11"}))
    old = [lab.container(), lab.container()]
    got = {lab.add(conf, c, cid=f"zold{i}")["ips"][0]["address"] for i, c in enumerate(old)}
    fillers = none_pods(lab, 12)
    assert lab.run("ADD", conf, lab.container(), cid="extra").rc != 0  # exhausted
    for i, c in enumerate(old):
        subprocess.run(["umount", pin_of(lab, f"zold{i}")], check=True)
        if remove:
            os.unlink(pin_of(lab, f"zold{i}"))
        subprocess.run(["ip", "netns", "del", os.path.basename(c)], check=True)
    new = lab.container()
    assert lab.add(conf, new, cid="new")["ips"][0]["address"] in got
    assert sorted(e[1] for e in lab.endpoints() if e[2] == "eth0") == ["new"]
    assert len(lab.leases()) == 1 and len(lab.veths()) == 1
    assert lab.run("DEL", conf, new, cid="new").rc == 0
    del_none_pods(lab, fillers)
    lab.assert_nothing_left()
    assert pins(lab) == []


def test_sandbox_living_on_runtime_path_is_released_when_its_netns_goes(lab):
    """c1's pin is gone (it lives on through the runtime's path, kept by the ADD after that);
    once the runtime deletes that netns, the next ADD releases c1's endpoint and lease."""
    conf = bridge_conf(lab)
    c1 = lab.container()
    lab.add(conf, c1, cid="c1")
    unpin_all(lab)
    c2 = lab.container()
    lab.add(conf, c2, cid="c2")
    assert sorted(e[1] for e in lab.endpoints()) == ["c1", "c2"]  # alive: kept
    subprocess.run(["ip", "netns", "del", os.path.basename(c1)], check=True)
    none = {"cniVersion": "1.1.0", "name": lab.network + "n", "type": "cnm-none"}
    c3 = lab.container()
    lab.add(none, c3, cid="c3", ifname="lo")  # no address wanted: no retry, the check itself
    assert sorted(e[1] for e in lab.endpoints()) == ["c2", "c3"]
    assert len(lab.leases()) == 1 and len(lab.veths()) == 1
    assert lab.run("DEL", conf, c2, cid="c2").rc == 0
    assert lab.run("DEL", none, c3, cid="c3", ifname="lo").rc == 0
    lab.assert_nothing_left()
    assert pins(lab) == []


class InProcess:
    """The plugins run through cli.plugin.handle() in this process, as the helper runs them,
    so VanishedCheck's remembered state is this test's (and can be looked at)."""

    def __init__(self, lab: Lab):
        self.lab = lab

    def run(self, command: str, conf: dict, ns: str, cid: str, ifname: str = "eth0"):
        from cni_plugins.cli.plugin import handle
        from cni_plugins.linux import netns as nsmod

        env = dict(self.lab.env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=ns, CNI_IFNAME=ifname,
                   CNI_ARGS="")
        env.pop("CNM_HELPER_SOCKET", None)
        fd = nsmod.open_netns(ns) if ns and os.path.exists(ns) else None
        try:
            return in_netns(self.lab.host, handle, conf["type"], env, json.dumps(conf).encode(), fd)
        finally:
            if fd is not None:
                os.close(fd)

    def add(self, conf: dict, ns: str, cid: str, ifname: str = "eth0") -> dict:
        r = self.run("ADD", conf, ns, cid, ifname)
        assert r.exit_code == 0, r
        return json.loads(r.stdout)


@pytest.fixture
def bounded(monkeypatch):
    """No round of extra sandboxes per ADD: only what VanishedCheck must always look at, and
    the full check after a failed ADD (counted)."""
    from cni_plugins import reconcile

    monkeypatch.setattr(reconcile.VanishedCheck, "ROUND", 0)
    calls = []
    real = reconcile.release_all_vanished

    def counted(*a, **kw):
        calls.append(real(*a, **kw))
        return calls[-1]

    monkeypatch.setattr(reconcile, "release_all_vanished", counted)
    return calls


def test_in_process_full_range_after_pins_unmounted_retries_once(lab, bounded):
    """Warm state says both pods are pinned; their pins are unmounted and netns deleted: the
    ADD fails on the full range, the full check releases them, the second run succeeds."""
    p = InProcess(lab)
    conf = bridge_conf(lab, ipam=lab.ipam({"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10",
                                            "rangeEnd": "10.250.0.11"}))
    old = [lab.container(), lab.container()]
    got = {p.add(conf, c, f"old{i}")["ips"][0]["address"] for i, c in enumerate(old)}
    assert p.run("ADD", conf, lab.container(), "extra").exit_code != 0
    assert bounded == [False]  # failed, nothing to release: no second run
    new = lab.container()  # made first: not a reuse of a dead netns's inode (its own check)
    for i, c in enumerate(old):
        subprocess.run(["umount", pin_of(lab, f"old{i}")], check=True)
        subprocess.run(["ip", "netns", "del", os.path.basename(c)], check=True)
    assert p.add(conf, new, "new")["ips"][0]["address"] in got
    assert bounded == [False, True]
    assert [e[1] for e in lab.endpoints()] == ["new"] and len(lab.leases()) == 1
    assert p.run("DEL", conf, new, "new").exit_code == 0
    lab.assert_nothing_left()
    assert pins(lab) == []


@pytest.fixture
def pin_dir_inode_reused(monkeypatch):
    """The identity a remembered check is keyed on, as on a filesystem that gives a recreated
    pin directory its old inode number (ext4 often does: test_in_process_watch_and_own_container
    failed ~1 run in 13 that way before the fix): only the pin directory's inode is hidden."""
    from cni_plugins import reconcile

    real = reconcile._identity

    def reused(node, boot):
        ident = real(node, boot)
        return None if ident is None else (ident[0], ident[1], ident[2], 1, ident[4])

    monkeypatch.setattr(reconcile, "_identity", reused)


def test_in_process_pin_dir_recreated_with_its_old_inode(lab, bounded, pin_dir_inode_reused):
    """/run wiped while c1 lives on (on its runtime's path only): the ADD that finds no pin
    directory checks everything, and what was remembered before is not used again even though
    the new pin directory's identity equals the old one's. c1's netns goes: the next ADD
    releases it."""
    p = InProcess(lab)
    none = {"cniVersion": "1.1.0", "name": lab.network + "n", "type": "cnm-none"}
    conf = bridge_conf(lab)
    c1, others = lab.container(), {f"f{i}": lab.container() for i in range(1, 5)}
    p.add(conf, c1, "c1")
    p.add(none, others["f1"], "f1", "lo")  # remembered: c1 pinned, nothing watched
    unpin_all(lab)
    os.rmdir(pin_dir(lab.env))
    p.add(none, others["f2"], "f2", "lo")  # no pin directory: full check (c1 now watched)
    p.add(none, others["f3"], "f3", "lo")  # pin directory again, "same" identity as before
    subprocess.run(["ip", "netns", "del", os.path.basename(c1)], check=True)
    p.add(none, others["f4"], "f4", "lo")
    assert sorted(e[1] for e in lab.endpoints()) == ["f1", "f2", "f3", "f4"]
    assert lab.leases() == [] and lab.veths() == []
    assert bounded == []
    for cid, ns in others.items():
        assert p.run("DEL", none, ns, cid, "lo").exit_code == 0
    assert lab.endpoints() == [] and pins(lab) == []


def test_in_process_watch_and_own_container(lab, bounded):
    """Without any round: a sandbox living on the runtime's path (learnt by a full check once
    the pin directory was wiped) is released by the next ADD once its netns goes; and an ADD
    for a container whose earlier sandbox vanished releases that one first (no failed run)."""
    p = InProcess(lab)
    none = {"cniVersion": "1.1.0", "name": lab.network + "n", "type": "cnm-none"}
    conf = bridge_conf(lab)
    c1, f1 = lab.container(), lab.container()
    p.add(conf, c1, "c1")
    p.add(none, f1, "f1", "lo")
    unpin_all(lab)
    os.rmdir(pin_dir(lab.env))  # /run wiped: another pin directory
    f2 = lab.container()
    p.add(none, f2, "f2", "lo")  # full check: c1 and f1 live on their runtime's paths
    f3 = lab.container()
    p.add(none, f3, "f3", "lo")  # warm from here on
    subprocess.run(["ip", "netns", "del", os.path.basename(c1)], check=True)
    f4 = lab.container()
    p.add(none, f4, "f4", "lo")
    assert sorted(e[1] for e in lab.endpoints()) == ["f1", "f2", "f3", "f4"]
    assert lab.leases() == [] and lab.veths() == []
    # f3's pin unmounted, its netns deleted; the runtime ADDs f3 again in a new netns
    subprocess.run(["umount", pin_of(lab, "f3")], check=True)
    subprocess.run(["ip", "netns", "del", os.path.basename(f3)], check=True)
    f3b = lab.container()
    p.add(none, f3b, "f3", "lo")
    assert bounded == []  # no ADD failed
    for cid, ns in (("f1", f1), ("f2", f2), ("f3", f3b), ("f4", f4)):
        assert p.run("DEL", none, ns, cid, "lo").exit_code == 0
    assert lab.endpoints() == [] and pins(lab) == []


def test_a_descriptor_opened_through_the_runtimes_path_keeps_the_sandbox(lab):
    """Attack on issue 26, finding 6: a namespace opened by its path (`open("/run/netns/x")`,
    as a runtime holding it does) shows in /proc as that path, and as "/" once `ip netns
    del` detached the mount; the users of a namespace missed such a descriptor, so the
    node-wide gc found the sandbox abandoned and took eth0 from a namespace still held."""
    import sys

    conf = bridge_conf(lab)
    ns = lab.container()
    lab.add(conf, ns, cid="c1")
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "print(fd, flush=True); sys.stdin.read()", ns],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = holder.stdout.readline().strip()
        subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)
        proc = cnmctl_gc(lab)
        assert proc.returncode == 0, proc
        held = f"/proc/{holder.pid}/fd/{fd}"
        assert lab.link("eth0", ns=held) is not None and lab.addrs("eth0", held), proc.stdout
        assert not [a for a in json.loads(proc.stdout)["removed"] if a["kind"] == "release"], proc.stdout
        assert [e[1] for e in lab.endpoints()] == ["c1"]
    finally:
        holder.stdin.close()
        holder.wait()
    proc = cnmctl_gc(lab)  # now only our pin holds it: abandoned, released
    assert proc.returncode == 0 and [a["kind"] for a in json.loads(proc.stdout)["removed"]] == ["release"], proc
    assert lab.endpoints() == [] and lab.veths() == []


def test_a_socket_left_in_the_namespace_keeps_the_sandbox(lab):
    """Attack on issue 20's fixes: a process that entered the namespace, opened a listening
    socket there and went back holds the namespace through the socket alone (no task in it,
    no descriptor of it, no mount); the node-wide gc found the sandbox abandoned and took eth0
    from under the service still listening in it."""
    import sys

    conf = bridge_conf(lab)
    ns = lab.container()
    lab.add(conf, ns, cid="c1")
    script = ("import ctypes, os, socket, sys; setns = ctypes.CDLL(None, use_errno=True).setns; "
              "own = os.open('/proc/self/ns/net', os.O_RDONLY); fd = os.open(sys.argv[1], os.O_RDONLY); "
              "assert setns(fd, 0x40000000) == 0; os.close(fd); "
              "s = socket.socket(); s.bind(('', 0)); s.listen(); "
              "assert setns(own, 0x40000000) == 0; os.close(own); print(s.getsockname()[1], flush=True); "
              "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script, ns], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip()
        [pin] = pin_paths(lab.env)
        subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)
        proc = cnmctl_gc(lab)
        assert proc.returncode == 0, proc
        assert not [a for a in json.loads(proc.stdout)["removed"] if a["kind"] == "release"], proc.stdout
        assert [e[1] for e in lab.endpoints()] == ["c1"]
        assert lab.link("eth0", ns=pin) is not None and lab.addrs("eth0", pin)
    finally:
        holder.stdin.close()
        holder.wait()
    proc = cnmctl_gc(lab)  # the socket closed: only our pin holds it now, released
    assert proc.returncode == 0 and [a["kind"] for a in json.loads(proc.stdout)["removed"]] == ["release"], proc
    assert lab.endpoints() == [] and lab.veths() == []


def test_a_time_wait_socket_does_not_keep_the_sandbox(lab):
    """CI, pass through the helper: podman's next `run -p` of a forgotten container's port
    failed with "port already allocated" — the container's HTTP server had closed its last
    connection first, and the TCP socket it left in TIME_WAIT (no descriptor owns it, 60 s)
    counted as a user of the namespace. Such a socket keeps nothing alive: the sandbox is
    abandoned and collected; an owned socket still keeps it (test above)."""
    import sys

    conf = bridge_conf(lab)
    ns = lab.container()
    lab.add(conf, ns, cid="c1")
    script = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
              "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); a.close(); "
              "assert c.recv(1) == b''; c.close(); s.close()")
    subprocess.run(["nsenter", f"--net={ns}", "--", "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["nsenter", f"--net={ns}", "--", sys.executable, "-c", script], check=True)
    tcp = subprocess.run(["nsenter", f"--net={ns}", "--", "cat", "/proc/net/tcp"], capture_output=True, text=True)
    assert [r.split()[3] for r in tcp.stdout.splitlines()[1:]] == ["06"], tcp.stdout  # one TIME_WAIT, the server's
    subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)
    proc = cnmctl_gc(lab)
    assert proc.returncode == 0 and [a["kind"] for a in json.loads(proc.stdout)["removed"]] == ["release"], proc
    assert lab.endpoints() == [] and lab.veths() == []
