"""Day-2 operations on the shipped bundle (issue 17 items 2, 3 and 5): an upgrade in place with
install.sh, a helper of another build on the socket, doctor and uninstall. Two builds of the
bundle, A and B (two build ids), are installed into a temporary prefix the way
docs/operators.md documents it; plugins are exec'd as a runtime does (a clean environment).

Slow (the two PyInstaller builds are shared with test_helper_bundle.py): marked `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from support.bundle import helpers, release_a, release_b  # noqa: F401 (fixtures)
from support.bundle import (CLEAN_PATH, CONFLIST, PLUGIN_LINKS, Helper, Node, build, build_id, doctor_helper_finding,
                            exec_plugin, run_script, snapshot, version_all)
from support.common import unique

pytestmark = pytest.mark.slow


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    yield n
    if n.installed():  # a failed test's install: its helpers too
        run_script(n.prefix / "cnm-cni" / "uninstall.sh")


# ---- item 2: the documented upgrade ------------------------------------------------------------
def test_upgrade_keeps_the_plugins_and_the_edited_conflist(node, release_a, release_b):
    """Issue 17 item 2: install A, edit the installed conflist (the node's pod CIDR), install B
    with the same command. Before: install.sh uninstalled A first, then refused the edited
    conflist as "not from this install": the CNI bin dir was left empty. Now every plugin answers
    throughout, B is installed, and the edit is kept (and said so)."""
    assert node.install(release_a).returncode == 0
    node.edit_pod_cidr("10.66.0.0/16")
    edited = (node.netconf / "10-cnm.conflist").read_text()

    stop, failures, rounds = threading.Event(), [], [0]

    def watch():  # a runtime's VERSION probes while the upgrade runs
        while not stop.is_set():
            failures.extend(version_all(node.prefix))
            rounds[0] += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        proc = node.install(release_b)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 0, proc.stderr
    assert "keeping" in proc.stdout and "10-cnm.conflist" in proc.stdout, proc.stdout
    assert (node.netconf / "10-cnm.conflist").read_text() == edited
    assert node.installed_build() == build_id(release_b)
    assert rounds[0] >= 1 and not failures, failures
    assert not version_all(node.prefix)
    assert os.path.realpath(node.sbin / "cnmctl") == os.path.realpath(node.prefix / "cnm-cni" / "cnm")
    # --force replaces the edited list with the bundle's.
    proc = node.install(release_b, "--force")
    assert proc.returncode == 0, proc.stderr
    assert node.conflist() == json.loads(open(CONFLIST).read())

    # Uninstall removes all of it, the previous bundles too.
    proc = node.uninstall()
    assert proc.returncode == 0, proc.stderr
    assert snapshot(node.root) == {}


def legacy_install(node, release) -> None:
    """An install as install.sh made them before versioned bundles: PREFIX/cnm-cni a directory,
    the plugin links pointing into it, its manifest."""
    node.prefix.mkdir(parents=True)
    node.netconf.mkdir(parents=True)
    shutil.copytree(release / "cnm-cni", node.prefix / "cnm-cni", symlinks=True)
    lines = [f"tree {node.prefix}/cnm-cni"]
    for plugin in PLUGIN_LINKS:
        os.symlink("cnm-cni/cnm", node.prefix / plugin)
        lines.append(f"link {node.prefix}/{plugin} cnm-cni/cnm")
    shutil.copy(CONFLIST, node.netconf / "10-cnm.conflist")
    digest = subprocess.run(["sha256sum", CONFLIST], capture_output=True, text=True).stdout.split()[0]
    lines.append(f"file {node.netconf}/10-cnm.conflist {digest}")
    (node.prefix / ".cnm-cni.manifest").write_text("".join(line + "\n" for line in lines))


def test_upgrade_from_an_install_before_versioned_bundles(node, release_a, release_b, tmp_path, helpers):
    """Issue 17 items 2 and 5, the first upgrade: over an install of the previous layout (a real
    PREFIX/cnm-cni directory, a helper started by hand from it), with the conflist edited.
    The plugin links are switched to the new bundle, the old helper drains and exits, the old
    directory goes once nothing runs from it, the edit is kept; uninstall removes everything."""
    legacy_install(node, release_a)
    node.edit_pod_cidr("10.64.0.0/16")
    old_helper = helpers(node.prefix / "cnm-cni" / "cnmd", tmp_path / "cnmd.sock", tmp_path / "a.log")
    old_helper.wait_listening()
    proc = run_script(release_b / "install.sh", "--prefix", node.prefix, "--loopback", "--conflist", CONFLIST,
                      "--netconf-dir", node.netconf)
    assert proc.returncode == 0, proc.stderr
    assert old_helper.proc.wait(timeout=60) == 0 and not (tmp_path / "cnmd.sock").exists()
    assert os.readlink(node.prefix / "cnm-cni") == ".cnm-cni/current"
    assert node.installed_build() == build_id(release_b) and not version_all(node.prefix)
    assert "10.64.0.0/16" in (node.netconf / "10-cnm.conflist").read_text()
    proc = node.uninstall()
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(node.root)) == ["etc", "opt"] and os.listdir(node.netconf) == ["10-cnm.conflist"]
    assert not os.path.exists(node.prefix / "cnm-cni") and os.listdir(node.prefix) == []


def test_failed_install_leaves_the_previous_one(node, release_a, release_b, tmp_path):
    """Issue 17 item 2: an install that fails its checks changes nothing: the previous install
    stays as it was and working. Before: install.sh removed the previous install first."""
    assert node.install(release_a).returncode == 0
    node.edit_pod_cidr("10.65.0.0/16")
    before = snapshot(node.root)

    # A target that is not ours: another network's list of the same name.
    other = tmp_path / "other" / "10-other.conflist"
    other.parent.mkdir()
    other.write_text(json.dumps({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "cnm-none"}]}))
    (node.netconf / "10-other.conflist").write_text("someone else's list\n")
    before["etc/cni/net.d/10-other.conflist"] = snapshot(node.root)["etc/cni/net.d/10-other.conflist"]
    proc = node.install(release_b, conflist=other)
    assert proc.returncode != 0 and "10-other.conflist exists and is not from this install" in proc.stderr
    assert snapshot(node.root) == before

    # A bundle that does not run on this node.
    broken = tmp_path / "broken"
    shutil.copytree(release_b, broken, symlinks=True)
    for lib in (broken / "cnm-cni" / "_internal").glob("libpython*"):
        lib.unlink()
    proc = node.install(broken)
    assert proc.returncode != 0 and "does not run on this node" in proc.stderr, (proc.stdout, proc.stderr)
    assert snapshot(node.root) == before
    assert node.installed_build() == build_id(release_a)
    assert not version_all(node.prefix)


# ---- item 3: ADD/DEL while the node upgrades ---------------------------------------------------
class Loops:
    """`n` loops of ADD/DEL through an installed prefix's cnm-bridge, each with its own container
    netns, in a throwaway host netns: every exec's answer is checked."""

    def __init__(self, n, prefix, netns, tmp_path, helper_socket="off"):
        self.prefix = prefix
        self.host = netns("cnmh")
        self.conf = {"cniVersion": "1.0.0", "name": unique("upn"), "type": "cnm-bridge", "bridge": unique("cnb"),
                     "isGateway": True, "ipMasq": True,
                     "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"),
                              "ranges": [[{"subnet": "10.251.40.0/24"}]]}}
        self.env = {"CNM_STATE_DIR": str(tmp_path / "state"), "CNM_RUN_DIR": str(tmp_path / "run"),
                    "CNM_LOG_FILE": str(tmp_path / "cnm-cni.log"), "CNM_HELPER_SOCKET": helper_socket}
        self.spaces = [netns("cnmc") for _ in range(n)]
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = [0] * n
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.loop, args=(i,)) for i in range(n)]

    def exec(self, command, cid, ns) -> str | None:
        rc, out, err = exec_plugin(self.prefix, "cnm-bridge", command, self.conf, host_netns=self.host,
                                   CNI_CONTAINERID=cid, CNI_NETNS=ns, CNI_IFNAME="eth0", **self.env)
        if rc != 0 or b"Traceback" in out + err:
            return f"{command} {cid}: rc={rc} stdout={out[-400:]!r} stderr={err[-400:]!r}"
        if command == "ADD" and not json.loads(out).get("ips"):
            return f"ADD {cid}: no ips in {out!r}"
        return None

    def loop(self, i):
        while not self.stop.is_set():
            cid = unique("up")
            for command in ("ADD", "DEL"):
                problem = self.exec(command, cid, self.spaces[i])
                if problem:
                    with self.lock:
                        self.failures.append(problem)
            with self.lock:
                self.done[i] += 1

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def each_done_once_more(self):
        """Until every loop has finished one more ADD/DEL pair than now."""
        with self.lock:
            target = [d + 1 for d in self.done]
        while True:
            with self.lock:
                if all(d >= t for d, t in zip(self.done, target)) or self.failures:
                    return
            self.stop.wait(0.2)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_adds_and_dels_through_an_upgrade(node, release_a, release_b, netns, tmp_path):
    """Issue 17 item 3: 8 loops of ADD/DEL (cnm-bridge, real netns) while the node is upgraded
    A -> B -> A -> B in place. Before: `rm -rf` + `cp -a` of a bundle whose modules load lazily:
    7-9 commands per upgrade failed ("failed to find plugin", tracebacks of half-copied
    modules). Now the new bundle is staged beside the old one and switched by rename(2):
    0 failed commands, 0 tracebacks; old bundles go once nothing runs from them."""
    assert node.install(release_a).returncode == 0
    loops = Loops(8, node.prefix, netns, tmp_path).start()
    try:
        loops.each_done_once_more()
        for release in (release_b, release_a, release_b):
            proc = node.install(release)
            assert proc.returncode == 0, proc.stderr
            loops.each_done_once_more()
    finally:
        loops.finish()
    assert not loops.failures, "\n".join(loops.failures[:10])
    assert min(loops.done) >= 4
    assert node.installed_build() == build_id(release_b)
    bundles = [p for p in os.listdir(node.prefix / ".cnm-cni") if p not in ("current", "manifest", "lock")]
    assert len(bundles) <= 3, bundles  # the current one, the one it replaced, one still in use at most


def test_helper_handover_under_load(node, release_a, release_b, netns, tmp_path, helpers):
    """Issue 17 item 5, under the load of item 3: a helper of build A started by hand holds the
    socket when the node is upgraded to B. B's execs are refused by it (in-process, correct);
    B's cnmd, once started, takes the socket over and A's helper drains and exits: B serves.
    An install then tells the installed helper of the build it replaces to drain and exit.
    Through all of it, 8 loops of ADD/DEL: 0 failed commands, 0 tracebacks."""
    sock = tmp_path / "cnmd" / "cnmd.sock"
    a_helper = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / "a.log").wait_listening()
    assert node.install(release_a).returncode == 0
    loops = Loops(8, node.prefix, netns, tmp_path, helper_socket=str(sock)).start()
    try:
        loops.each_done_once_more()
        assert node.install(release_b).returncode == 0
        assert a_helper.proc.poll() is None  # not from this install: install.sh leaves it alone
        loops.each_done_once_more()
        b_helper = helpers(node.prefix / "cnm-cni" / "cnmd", sock, tmp_path / "b.log")
        assert a_helper.proc.wait(timeout=120) == 0  # drained and exited
        b_helper.wait_listening()
        loops.each_done_once_more()
        loops.each_done_once_more()
        proc = node.install(release_a)  # a downgrade: B's installed helper is told to go
        assert proc.returncode == 0, proc.stderr
        assert f"helper pid {b_helper.proc.pid} stopped" in proc.stdout, proc.stdout
        assert b_helper.proc.wait(timeout=60) == 0
        loops.each_done_once_more()
    finally:
        loops.finish()
    assert not loops.failures, "\n".join(loops.failures[:10])
    assert f"replacing the helper pid {a_helper.proc.pid}" in b_helper.text()
    served = int(b_helper.text().rsplit("stopped after ", 1)[1].split()[0])
    assert served > 0, b_helper.text()  # B served the loops' execs once it held the socket
    assert not sock.exists()


# ---- item 5: the helper of another build -------------------------------------------------------
@pytest.mark.parametrize("how", ["cnmd", "cnmctl daemon"])
def test_new_helper_takes_over_from_another_build(release_a, release_b, tmp_path, helpers, how):
    """Issue 17 item 5: a helper of build A (started by hand or `cnmctl daemon`) holds the socket
    when B's cnmd starts. Before: B said "another helper already listens" and exited, and every
    command ran in-process (~11x slower) for good. Now B serves, A drained and exited, doctor is
    clean."""
    sock = tmp_path / "run" / "cnmd.sock"
    daemon = how == "cnmctl daemon"
    a_exe = release_a / "cnm-cni" / ("cnmctl" if daemon else "cnmd")
    b_exe = release_b / "cnm-cni" / ("cnmctl" if daemon else "cnmd")
    a_helper = helpers(a_exe, sock, tmp_path / "a.log", daemon).wait_listening()
    b_helper = helpers(b_exe, sock, tmp_path / "b.log", daemon)
    assert a_helper.proc.wait(timeout=120) == 0, a_helper.text()
    b_helper.wait_listening()
    assert b_helper.proc.poll() is None, b_helper.text()

    conf = {"cniVersion": "1.0.0", "name": unique("bn"), "type": "cnm-none"}
    rc, out, err = exec_plugin(release_b / "cnm-cni", "cnm-none", "VERSION", conf, CNM_HELPER_SOCKET=str(sock))
    assert rc == 0, (out, err)
    finding = doctor_helper_finding(release_b / "cnm-cni" / "cnmctl", sock, release_b / "cnm-cni", tmp_path)
    assert finding["severity"] == "ok" and str(b_helper.proc.pid) in finding["message"], finding
    assert "stopped after" in a_helper.text() and "refused a request" not in b_helper.text()
    assert b_helper.stop() == 0
    assert not sock.exists()


def test_new_helper_of_the_same_build_does_not_take_over(release_b, tmp_path, helpers):
    """A second helper of the same build leaves the one serving alone (as before)."""
    sock = tmp_path / "cnmd.sock"
    first = helpers(release_b / "cnm-cni" / "cnmd", sock, tmp_path / "1.log").wait_listening()
    second = helpers(release_b / "cnm-cni" / "cnmd", sock, tmp_path / "2.log")
    assert second.proc.wait(timeout=120) != 0
    assert "already listens" in second.text() and "same build" in second.text()
    assert first.proc.poll() is None and sock.exists()


def test_doctor_reports_a_stale_helper(node, release_a, release_b, tmp_path, helpers):
    """Issue 17 item 5: `cnmctl doctor` reports a helper of another build than the installed
    plugins, and how to fix it. Before: doctor did not look at the helper at all."""
    sock = tmp_path / "cnmd.sock"
    a_helper = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / "a.log").wait_listening()
    assert node.install(release_b).returncode == 0
    finding = doctor_helper_finding(node.sbin / "cnmctl", sock, node.prefix, tmp_path)
    assert finding["severity"] == "error", finding
    assert "stale helper" in finding["message"] and f"pid {a_helper.proc.pid}" in finding["message"]
    assert build_id(release_a) in finding["message"] and build_id(release_b) in finding["message"]
    assert str(node.prefix / "cnm-cni" / "cnmd") in finding["fix"], finding
    # The fix it gives works: the installed helper replaces the stale one.
    b_helper = helpers(node.prefix / "cnm-cni" / "cnmd", sock, tmp_path / "b.log")
    assert a_helper.proc.wait(timeout=120) == 0
    b_helper.wait_listening()
    assert doctor_helper_finding(node.sbin / "cnmctl", sock, node.prefix, tmp_path)["severity"] == "ok"


def test_uninstall_stops_the_helpers_of_the_install(node, release_a, tmp_path, helpers):
    """Issue 17 item 5: uninstall.sh leaves no helper and no socket: it stops every helper that
    runs from the bundles it installed (`cnmd` or `cnmctl daemon`, however started); a helper of
    another install is not its own and stays. Before: helper and socket stayed."""
    assert node.install(release_a).returncode == 0
    ours = helpers(node.prefix / "cnm-cni" / "cnmd", tmp_path / "s1" / "cnmd.sock", tmp_path / "1.log")
    ours_daemon = helpers(node.sbin / "cnmctl", tmp_path / "s2" / "cnmd.sock", tmp_path / "2.log", daemon=True)
    theirs = helpers(release_a / "cnm-cni" / "cnmd", tmp_path / "s3" / "cnmd.sock", tmp_path / "3.log")
    for h in (ours, ours_daemon, theirs):
        h.wait_listening()
    proc = node.uninstall()
    assert proc.returncode == 0, proc.stderr
    assert ours.proc.wait(timeout=60) == 0 and ours_daemon.proc.wait(timeout=60) == 0
    assert not (tmp_path / "s1" / "cnmd.sock").exists() and not (tmp_path / "s2" / "cnmd.sock").exists()
    assert theirs.proc.poll() is None and (tmp_path / "s3" / "cnmd.sock").exists()
    assert not node.prefix.exists()


# ---- item 3: an exec that cannot load its code ------------------------------------------------
@pytest.mark.parametrize("missing", [
    ["cni_plugins/controller.pyc", "traceback.pyc"],  # a lazy import of the command, and the error path's
    ["cni_plugins/cli/thin.pyc"],  # the entry point's first import
    ["sqlite3"],  # a stdlib package the store needs
])
def test_exec_that_cannot_load_answers_a_cni_error(release_b, tmp_path, netns, missing):
    """Issue 17 item 3: an exec whose files are incomplete (an upgrade half-copied, a module
    missing) answers a CNI error object on stdout, code 11 (a retry will work), never a Python
    traceback. Before: `No module named 'traceback'` and other tracebacks on stderr, nothing
    on stdout."""
    bundle = tmp_path / "bundle"
    shutil.copytree(release_b / "cnm-cni", bundle, symlinks=True)
    for name in missing:
        path = bundle / "_internal" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    conf = {"cniVersion": "0.4.0", "name": unique("bn"), "type": "cnm-none"}
    rc, out, err = exec_plugin(bundle, "cnm-none", "ADD", conf, CNI_CONTAINERID=unique("c"), CNI_NETNS=netns(),
                               CNI_IFNAME="eth0", CNM_STATE_DIR=str(tmp_path / "st"), CNM_RUN_DIR=str(tmp_path / "run"),
                               CNM_LOG_FILE=str(tmp_path / "log"), CNM_HELPER_SOCKET="off")
    assert rc == 1 and b"Traceback" not in out + err, (out, err)
    answer = json.loads(out)
    assert answer["code"] == 11 and answer["cniVersion"] == "0.4.0", answer
    assert "retry" in answer["details"], answer
