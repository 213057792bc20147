"""`cnmctl gc NETWORK` without a runtime's list: only attachments whose namespace is provably
gone are DELed; running containers keep eth0, veth, lease, published port and cache entry.
Real cnmctl, plugins and namespaces in a throwaway host netns, with a private libcni cache.

Issue 17 item 1: the runner copied cnitool's GC, which DELs every cached attachment of the
network when no valid list is given, and the cache is the one containerd and podman share.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from support.bridge import Lab, sh
from support.common import BIN
from support.ports import nft_map_elements

CNMCTL = os.path.join(BIN, "cnmctl")
NSENTER = shutil.which("nsenter")
PORT = {"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    lab.confdir = tmp_path / "net.d"
    lab.confdir.mkdir()
    lab.cache = tmp_path / "cni-cache"
    plugin = {k: v for k, v in lab.conf(isGateway=True, ipMasq=True).items() if k not in ("cniVersion", "name")}
    plugin["capabilities"] = {"portMappings": True}
    conflist = {"cniVersion": "1.1.0", "name": lab.network, "plugins": [plugin]}
    (lab.confdir / f"{lab.network}.conflist").write_text(json.dumps(conflist))
    return lab


def cnmctl(lab, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(lab.env, NETCONFPATH=str(lab.confdir), CNI_CACHE_DIR=str(lab.cache))
    full.update(env)
    return subprocess.run([NSENTER, f"--net={lab.host}", "--", CNMCTL, *args], env=full, capture_output=True,
                          text=True, timeout=120)


def add(lab, ns: str, ports: bool = False) -> str:
    extra = {"CAP_ARGS": json.dumps({"portMappings": [PORT]})} if ports else {}
    proc = cnmctl(lab, "add", lab.network, ns, **extra)
    assert proc.returncode == 0, proc
    return cached(lab)[ns]


def cached(lab) -> dict[str, str]:
    """netns path -> container id of every cache entry of the lab's network."""
    results = lab.cache / "results"
    out = {}
    for name in os.listdir(results) if results.is_dir() else []:
        doc = json.loads((results / name).read_text())
        if doc["networkName"] == lab.network:
            out[doc["netns"]] = doc["containerId"]
    return out


def gc(lab, *flags: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    proc = cnmctl(lab, "gc", lab.network, "--format", "json", *flags)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {"attachments": []}
    return proc, {a["containerID"]: a for a in doc["attachments"]}


def alive(lab, ns: str) -> bool:
    """eth0 is there with its address inside `ns`."""
    return lab.link("eth0", ns=ns) is not None and bool(lab.addrs("eth0", ns))


def drop_netns(path: str) -> None:
    subprocess.run(["ip", "netns", "del", os.path.basename(path)], check=True)


def test_gc_network_keeps_running_containers_and_dels_the_gone_one(lab):
    """Issue 17 item 1: two running containers survive `cnmctl gc NETWORK` (eth0, veth,
    lease, published port, cache entry); the one whose netns is gone is DELed."""
    ns1, ns2, ns3 = lab.container(), lab.container(), lab.container()
    c1, c2, c3 = add(lab, ns1, ports=True), add(lab, ns2), add(lab, ns3)
    drop_netns(ns3)
    assert len(lab.veths()) == 3 and len(lab.leases()) == 3

    proc, report = gc(lab)
    assert proc.returncode == 0, proc
    assert alive(lab, ns1) and alive(lab, ns2)  # the kernel first: what the finding broke
    assert sorted(n for n, l in lab.links().items() if l.get("master") == lab.bridge) == sorted(lab.veths())
    assert len(lab.veths()) == 2 and len(lab.leases()) == 2
    assert sorted(cached(lab)) == sorted([ns1, ns2])
    assert [e for e in nft_map_elements(lab) if e[0] == "ports4_any_addr"], "c1's published port is gone"
    assert {e[1] for e in lab.endpoints()} == {c1, c2}
    assert report[c1]["action"] == report[c2]["action"] == "kept", report
    assert "live namespace" in report[c1]["reason"]
    assert report[c3]["action"] == "deleted" and "no longer exists" in report[c3]["reason"], report

    again, report = gc(lab)  # nothing more to do; the live ones are still kept
    assert again.returncode == 0 and {a["action"] for a in report.values()} == {"kept"}


def test_table_output_names_what_was_deleted_and_kept(lab):
    ns1, ns2 = lab.container(), lab.container()
    c1, c2 = add(lab, ns1), add(lab, ns2)
    drop_netns(ns2)
    proc = cnmctl(lab, "gc", lab.network)
    assert proc.returncode == 0, proc
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["ACTION", "CONTAINER", "IFNAME", "NETNS", "WHY"]
    assert any(r.startswith("kept") and c1 in r for r in rows) and any(r.startswith("deleted") and c2 in r for r in rows)


def test_a_cache_without_netns_is_judged_by_the_results_sandbox(lab):
    """libcni before 1.2 (containerd 1.6, podman 4.3) caches no netns path: the `sandbox`
    the plugin reported for the interface (its CNI_NETNS) is used instead."""
    ns1, ns2 = lab.container(), lab.container()
    c1, c2 = add(lab, ns1), add(lab, ns2)
    for path in (lab.cache / "results").iterdir():
        doc = json.loads(path.read_text())
        del doc["netns"]
        path.write_text(json.dumps(doc))
    drop_netns(ns2)
    proc, report = gc(lab)
    assert proc.returncode == 0, proc
    assert alive(lab, ns1) and len(lab.veths()) == 1
    assert report[c1]["action"] == "kept" and report[c1]["netns"] == ns1, report
    assert report[c2]["action"] == "deleted" and report[c2]["netns"] == ns2, report


def test_dry_run_changes_nothing(lab):
    ns1, ns2 = lab.container(), lab.container()
    c1, c2 = add(lab, ns1), add(lab, ns2)
    drop_netns(ns2)
    proc, report = gc(lab, "--dry-run")
    assert proc.returncode == 0, proc
    assert report[c1]["action"] == "kept" and report[c2]["action"] == "would delete", report
    assert len(lab.veths()) == 2 and len(lab.leases()) == 2 and len(cached(lab)) == 2


def test_all_is_cnitools_gc(lab):
    """--all keeps cnitool's semantics: every cached attachment is DELed, running or not."""
    ns1, ns2 = lab.container(), lab.container()
    c1, c2 = add(lab, ns1, ports=True), add(lab, ns2)
    proc, report = gc(lab, "--all")
    assert proc.returncode == 0, proc
    assert {c: a["action"] for c, a in report.items()} == {c1: "deleted", c2: "deleted"}
    assert lab.link("eth0", ns=ns1) is None and cached(lab) == {}
    lab.assert_nothing_left()


def test_all_and_dry_run_need_network_and_exclude_each_other(lab):
    for args in (("gc", "--all"), ("gc", "--dry-run"), ("gc", lab.network, "--all", "--dry-run")):
        proc = cnmctl(lab, *args)
        assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr, proc


def test_a_process_in_the_namespace_keeps_it(lab):
    """The runtime's path is gone, but a process still runs in the namespace our store
    recorded: the container is not gone, whatever the path says."""
    ns = lab.container()
    cid = add(lab, ns)
    sleeper = subprocess.Popen([NSENTER, f"--net={ns}", "--", "sleep", "60"])
    try:
        wait_entered(sleeper.pid, ns)
        drop_netns(ns)
        proc, report = gc(lab)
        assert proc.returncode == 0, proc
        assert report[cid]["action"] == "kept", report
        assert f"in use: task {sleeper.pid}" in report[cid]["reason"], report
        assert len(lab.veths()) == 1
    finally:
        sleeper.kill()
        sleeper.wait()
    proc, report = gc(lab)
    assert report[cid]["action"] == "deleted", report
    lab.assert_nothing_left()


def test_a_file_left_where_the_namespace_was_is_kept_until_removed(lab):
    """A path that exists but is no mounted namespace may be a mount this mount namespace
    cannot see: kept (and said so) until the file is gone."""
    ns = lab.container()
    cid = add(lab, ns)
    subprocess.run(["umount", ns], check=True)  # the file stays, the mount is gone
    try:
        proc, report = gc(lab)
        assert report[cid]["action"] == "kept" and "no mounted namespace" in report[cid]["reason"], report
        assert len(lab.veths()) == 1
    finally:
        os.unlink(ns)
    proc, report = gc(lab)
    assert proc.returncode == 0 and report[cid]["action"] == "deleted", (proc, report)
    lab.assert_nothing_left()


def wait_entered(pid: int, ns: str) -> None:
    """Until process `pid` runs in the namespace at path `ns` (or differs from ours, for "")."""
    want = os.stat(ns).st_ino if ns else None
    for _ in range(200):
        ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        if ino == want or (want is None and ino != os.stat("/proc/self/ns/net").st_ino):
            return
        subprocess.run(["sleep", "0.05"])
    raise AssertionError(f"process {pid} never entered {ns or 'a new netns'}")


def test_proc_pid_netns_is_gone_with_its_process(lab):
    """A runtime that names the netns /proc/<pid>/ns/net: kept while the process lives,
    DELed once it has exited."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        wait_entered(holder.pid, "")
        sh("ip", "link", "set", "lo", "up", ns=path)
        cid = add(lab, path)
        proc, report = gc(lab)
        assert report[cid]["action"] == "kept", report
    finally:
        holder.kill()
        holder.wait()
    proc, report = gc(lab)
    assert proc.returncode == 0 and report[cid]["action"] == "deleted", (proc, report)
    assert f"process {holder.pid} is gone" == report[cid]["reason"]
    lab.assert_nothing_left()


def test_a_failed_del_is_reported_and_exits_1(lab):
    ns = lab.container()
    cid = add(lab, ns)
    drop_netns(ns)
    proc = cnmctl(lab, "gc", lab.network, "--format", "json", CNI_PATH="/nonexistent")
    report = {a["containerID"]: a for a in json.loads(proc.stdout)["attachments"]}
    assert proc.returncode == 1 and report[cid]["action"] == "failed", proc
    assert "failed to find plugin" in report[cid]["error"]
    assert cached(lab), "a failed DEL must keep the cache entry for a retry"
    proc, report = gc(lab)
    assert proc.returncode == 0 and report[cid]["action"] == "deleted"
    lab.assert_nothing_left()


def test_disable_gc_keeps_everything(lab):
    ns = lab.container()
    cid = add(lab, ns)
    drop_netns(ns)
    path = lab.confdir / f"{lab.network}.conflist"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), disableGC=True)))
    for flags in ((), ("--all",)):
        proc, report = gc(lab, *flags)
        assert proc.returncode == 0 and len(lab.veths()) == 1, (proc, report)
        assert report[cid]["action"] == "kept" and report[cid]["reason"] == "the list sets disableGC", report


def test_nothing_cached_says_so(lab):
    proc = cnmctl(lab, "gc", lab.network)
    assert proc.returncode == 0 and "no cached attachment" in proc.stdout, proc


def test_judge_on_paths(tmp_path, netns):
    """The rules of runtime/liveness.judge on real files and namespaces."""
    from cni_plugins.runtime.liveness import judge

    live = netns("cnmc")
    assert not judge(live).gone
    assert judge(str(tmp_path / "gone")).gone
    assert not judge(str(tmp_path / "nodir" / "gone")).gone  # its directory is not here either
    assert not judge("").gone and not judge("relative/path").gone
    (tmp_path / "plain").write_text("")
    assert not judge(str(tmp_path / "plain")).gone
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    assert not judge(str(tmp_path / "dangling")).gone
    assert not judge(str(tmp_path)).gone  # a directory is not a namespace
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert judge(f"/proc/{dead.pid}/ns/net").gone
    assert not judge(f"/proc/{os.getpid()}/ns/net").gone
    from cni_plugins.runtime.liveness import names_a_process

    os.symlink(f"/proc/{dead.pid}", tmp_path / "procdir")
    for path in (f"/proc/{dead.pid}/ns/net", f"/proc/self/fd/99", str(tmp_path / "procdir" / "ns" / "net")):
        assert names_a_process(path), path
    assert not names_a_process("/run/netns/x") and not names_a_process(str(tmp_path / "gone"))


# -- a namespace that outlives the runtime's path --------------------------------------------------
def sleeper_in(ns: str) -> subprocess.Popen:
    proc = subprocess.Popen([NSENTER, f"--net={ns}", "--", "sleep", "600"])
    wait_entered(proc.pid, ns)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("shape", ["/proc/{pid}/ns/net", "/proc/{pid}/task/{pid}/ns/net"])
def test_a_mounted_namespace_outlives_its_process(lab, shape):
    """Attack on issue 26, finding 6: an attachment ADDed by /proc/P/ns/net of a process in
    a namespace that is also mounted (`ip netns add g1; ip netns exec g1 sleep`): once P is
    killed, `cnmctl gc NETWORK` DELed it ("process P is gone") and took eth0 from g1, still
    mounted at /run/netns/g1. The mount is a user of the namespace: kept, and said so."""
    ns = lab.container()
    sleeper = sleeper_in(ns)
    try:
        cid = add(lab, shape.format(pid=sleeper.pid))
    finally:
        stop(sleeper)
    proc, report = gc(lab)
    assert proc.returncode == 0, proc
    assert alive(lab, ns), report  # the kernel first: what the finding broke
    assert len(lab.veths()) == 1 and len(lab.leases()) == 1
    assert report[cid]["action"] == "kept", report
    assert f"process {sleeper.pid} is gone" in report[cid]["reason"] and f"mount {ns}" in report[cid]["reason"]
    drop_netns(ns)  # now nothing but our pin holds it
    proc, report = gc(lab)
    assert proc.returncode == 0 and report[cid]["action"] == "deleted", (proc, report)
    lab.assert_nothing_left()


def test_an_open_descriptor_keeps_the_namespace(lab):
    """Attack on issue 26, finding 6: a descriptor of the namespace (a runtime holding it
    open) is a user too, as for the node-wide gc."""
    ns = lab.container()
    cid = add(lab, ns)
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "print(fd, flush=True); sys.stdin.read()", ns],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = holder.stdout.readline().strip()
        drop_netns(ns)
        proc, report = gc(lab)
        assert proc.returncode == 0 and alive_by_fd(lab, holder.pid, fd), (proc, report)
        assert report[cid]["action"] == "kept" and f"fd {holder.pid}/{fd}" in report[cid]["reason"], report
    finally:
        holder.stdin.close()
        holder.wait()
    proc, report = gc(lab)
    assert proc.returncode == 0 and report[cid]["action"] == "deleted", (proc, report)
    lab.assert_nothing_left()


def alive_by_fd(lab, pid: int, fd: str) -> bool:
    return alive(lab, f"/proc/{pid}/fd/{fd}")


def test_an_unrecorded_proc_path_is_not_proof(lab, tmp_path):
    """Attack on issue 26, finding 6: without our store's record of which namespace it was,
    a gone /proc/<pid> path proves nothing (the namespace may be mounted elsewhere): kept.
    (The record is removed by hand here; a reference plugin's list has none at all.)"""
    ns = lab.container()
    sleeper = sleeper_in(ns)
    try:
        cid = add(lab, f"/proc/{sleeper.pid}/ns/net")
    finally:
        stop(sleeper)
    import sqlite3

    with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as conn:
        conn.execute("DELETE FROM endpoints")
    proc, report = gc(lab)
    assert proc.returncode == 0 and alive(lab, ns), (proc, report)
    assert report[cid]["action"] == "kept" and "--all" in report[cid]["reason"], report


def test_a_path_through_a_symlink(lab, tmp_path):
    """Attack on issue 26, finding 6 (another path shape; kept before the fix too): a netns
    path through a symlink to /proc/<pid>, the process gone, the namespace still mounted."""
    ns = lab.container()
    sleeper = sleeper_in(ns)
    link = tmp_path / "procdir"
    os.symlink(f"/proc/{sleeper.pid}", link)
    try:
        cid = add(lab, f"{link}/ns/net")
    finally:
        stop(sleeper)
    proc, report = gc(lab)
    assert proc.returncode == 0 and alive(lab, ns), (proc, report)
    assert report[cid]["action"] == "kept", report
