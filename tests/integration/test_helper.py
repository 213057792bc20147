"""The resident helper (cnmd) and the thin path: same CNI behaviour as in-process, and the
fallbacks (absent, refused, silent, other mount namespace) run the command in-process.

Which path served an exec is seen from outside: run under `python3 -X importtime`, an
in-process command imports cni_plugins.controller, a command the helper served does not.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni_plugins.cli import cnmd, thin
from support.common import BIN, GO_PLUGINS, unique, wait_listening

PYTHON = "/usr/bin/python3"  # bin/cnm's shebang interpreter


def start_helper(directory, command=("cnmd",), prefix=()) -> tuple[subprocess.Popen, str]:
    sock = os.path.join(str(directory), "cnmd.sock")
    log = open(os.path.join(str(directory), "cnmd.log"), "wb")
    proc = subprocess.Popen([*prefix, os.path.join(BIN, command[0]), *command[1:], "--socket", sock], stdout=log,
                            stderr=log)
    wait_listening(sock, proc, log=os.path.join(str(directory), "cnmd.log"))
    return proc, sock


@pytest.fixture(scope="module")
def helper(tmp_path_factory):
    directory = tmp_path_factory.mktemp("helper")
    proc, sock = start_helper(directory)
    yield sock
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    assert not os.path.exists(sock)  # a clean stop removes its socket


@pytest.fixture
def env(tmp_path):
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_PATH": f"{BIN}:{GO_PLUGINS}",
        "CNM_STATE_DIR": str(tmp_path / "state"),
        "CNM_RUN_DIR": str(tmp_path / "run"),
    }


def run(plugin, command, conf, env, *, socket_path="off", container_id="", netns="", ifname="",
        prefix=(), cwd=None):
    """Exec a plugin like a runtime; returns (rc, stdout, served_by_helper)."""
    full = dict(env, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname,
                CNM_HELPER_SOCKET=socket_path)
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    argv = [*prefix, PYTHON, "-IS", "-X", "importtime", os.path.join(BIN, plugin)]
    proc = subprocess.run(argv, input=stdin, env=full, capture_output=True, timeout=120, cwd=cwd)
    in_process = b"cni_plugins.cli.plugin" in proc.stderr or b"cni_plugins.controller" in proc.stderr
    return proc.returncode, proc.stdout, not in_process


def same_both_ways(plugin, command, conf, env, helper, **kw):
    """The helper's answer, after checking the in-process answer is byte-identical."""
    rc_h, out_h, served = run(plugin, command, conf, env, socket_path=helper, **kw)
    assert served, out_h
    rc_p, out_p, served_p = run(plugin, command, conf, env, socket_path="off", **kw)
    assert not served_p
    assert (rc_h, out_h) == (rc_p, out_p)
    return rc_h, out_h


def add_both_ways(plugin, conf, env, helper, **kw):
    """ADD via the helper, DEL, ADD in-process: both ADD answers must be identical."""
    rc_h, out_h, served = run(plugin, "ADD", conf, env, socket_path=helper, **kw)
    assert served, out_h
    assert run(plugin, "DEL", conf, env, socket_path=helper, **kw)[:2] == (0, b"")
    rc_p, out_p, _ = run(plugin, "ADD", conf, env, socket_path="off", **kw)
    assert (rc_h, out_h) == (rc_p, out_p)
    return rc_h, out_h


def test_socket_is_root_only(helper):
    assert stat.S_IMODE(os.stat(helper).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(helper)).st_mode) == 0o700


@pytest.mark.parametrize(
    "command,stdin,extra",
    [
        ("VERSION", b'{"cniVersion":"0.4.0"}', {}),
        ("VERSION", b"", {}),
        ("ADD", b'{"cniVersion":', {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}),  # decode error
        ("FROB", b"{}", {}),
        ("ADD", b'{"cniVersion":"1.0.0","name":"n","type":"cnm-none"}', {}),  # env missing
        ("GC", b'{"cniVersion":"1.1.0","name":"n","type":"cnm-none"}', {}),
        ("STATUS", b'{"cniVersion":"1.1.0","name":"n","type":"cnm-none"}', {}),
    ],
)
def test_protocol_answers_identical(helper, env, command, stdin, extra):
    same_both_ways("cnm-none", command, stdin, dict(env, **extra), helper)


def test_none_add_check_del_through_helper(helper, env, netns):
    ns = netns()
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    kw = dict(container_id=unique("c"), netns=ns, ifname="eth0")
    rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=helper, **kw)
    assert rc == 0 and served, out
    assert json.loads(out)["interfaces"][0]["name"] == "lo"
    lo = json.loads(subprocess.check_output(["ip", "-n", os.path.basename(ns), "-j", "link", "show", "lo"]))
    assert "UP" in lo[0]["flags"]  # the kernel, not only our answer
    rc, out, served = run("cnm-none", "CHECK", dict(conf, prevResult=json.loads(out)), env,
                          socket_path=helper, **kw)
    assert (rc, out, served) == (0, b"", True)
    # A second ADD is the same conflict error on both paths.
    same_both_ways("cnm-none", "ADD", conf, env, helper, **kw)
    rc, out, served = run("cnm-none", "DEL", conf, env, socket_path=helper, **kw)
    assert (rc, out, served) == (0, b"", True)
    lo = json.loads(subprocess.check_output(["ip", "-n", os.path.basename(ns), "-j", "link", "show", "lo"]))
    assert "UP" not in lo[0]["flags"]


def test_missing_netns_is_served_in_process(helper, env):
    """The helper never resolves a caller's path: an unopenable CNI_NETNS runs in-process."""
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=helper, container_id="c1",
                          netns="/nonexistent/netns", ifname="eth0")
    assert not served and rc != 0 and json.loads(out)["code"] == 8


def test_caller_in_another_netns_is_served_there(helper, env, netns):
    """A caller in a throwaway 'host' netns: the helper thread adopts that netns (cnm-host sees it)."""
    host = netns("cnmh")
    subprocess.run(["ip", "-n", os.path.basename(host), "link", "add", "hveth0", "type", "veth",
                    "peer", "name", "hveth1"], check=True)
    subprocess.run(["ip", "-n", os.path.basename(host), "addr", "add", "10.99.7.1/24", "dev", "hveth0"],
                   check=True)
    conf = {"cniVersion": "1.0.0", "name": unique("hh"), "type": "cnm-host"}
    kw = dict(container_id=unique("c"), netns=host, ifname="eth0", prefix=("nsenter", f"--net={host}", "--"))
    rc, out = add_both_ways("cnm-host", conf, env, helper, **kw)
    assert rc == 0, out
    assert sorted(i["name"] for i in json.loads(out)["interfaces"]) == ["hveth0", "hveth1"]
    assert json.loads(out)["ips"][0]["address"] == "10.99.7.1/24"
    # The guard compares with the caller's netns too: a foreign CNI_NETNS is refused alike.
    other = netns()
    same_both_ways("cnm-host", "ADD", conf, env, helper, **dict(kw, netns=other, container_id=unique("c")))
    rc, out, served = run("cnm-host", "DEL", conf, env, socket_path=helper, **kw)
    assert (rc, served) == (0, True), out


def test_other_mount_namespace_is_served_in_process(helper, env, netns):
    ns = netns()
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    kw = dict(container_id=unique("c"), netns=ns, ifname="eth0", prefix=("unshare", "--mount", "--"))
    rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=helper, **kw)
    assert rc == 0 and not served, out
    rc, out, served = run("cnm-none", "DEL", conf, env, socket_path=helper, **kw)
    assert rc == 0 and not served, out


def test_relative_paths_resolve_in_the_callers_cwd(helper, env, netns, tmp_path):
    ns = netns()
    work = tmp_path / "cwd"
    work.mkdir()
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    rel = dict(env, CNM_STATE_DIR="relstate")
    kw = dict(container_id=unique("c"), netns=ns, ifname="eth0", cwd=str(work))
    rc, out, served = run("cnm-none", "ADD", conf, rel, socket_path=helper, **kw)
    assert rc == 0 and served, out
    assert (work / "relstate" / "cnm.db").exists()
    assert not os.path.exists("/relstate")
    assert run("cnm-none", "DEL", conf, rel, socket_path=helper, **kw)[:2] == (0, b"")


def test_concurrent_requests(helper, env, netns):
    """20 ADDs at once through one helper: all succeed, every netns has lo up, DEL cleans up."""
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    pods = [(unique("c"), netns()) for _ in range(20)]

    def cmd(command, pod):
        return run("cnm-none", command, conf, env, socket_path=helper, container_id=pod[0], netns=pod[1],
                   ifname="eth0")

    with ThreadPoolExecutor(20) as pool:
        added = list(pool.map(lambda p: cmd("ADD", p), pods))
    assert all(rc == 0 and served for rc, _, served in added), added
    for _, ns in pods:
        lo = json.loads(subprocess.check_output(["ip", "-n", os.path.basename(ns), "-j", "link", "show", "lo"]))
        assert "UP" in lo[0]["flags"]
    with ThreadPoolExecutor(20) as pool:
        deleted = list(pool.map(lambda p: cmd("DEL", p), pods))
    assert all(rc == 0 and served for rc, _, served in deleted), deleted
    import sqlite3

    db = sqlite3.connect(os.path.join(env["CNM_STATE_DIR"], "cnm.db"))
    assert db.execute("SELECT COUNT(*) FROM endpoints").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM sandboxes").fetchone()[0] == 0


def task_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1] for line in f if line.startswith(key + ":"))


def test_one_worker_serves_callers_of_different_netns_in_turn(tmp_path, env, netns):
    """One persistent worker serves request after request, each in its own caller's netns and
    cwd: also the helper's own netns right after a foreign one, and after a request that failed
    inside the caller's netns. cnm-host reports the interfaces of the netns it ran in, so a
    request run in a wrong netns shows as a wrong answer."""
    spaces = {}
    for key, net in (("h", "10.99.20"), ("a", "10.99.21"), ("b", "10.99.22")):
        path = netns("cnmw")
        name = os.path.basename(path)
        subprocess.run(["ip", "-n", name, "link", "add", f"w{key}0", "type", "veth", "peer", "name", f"w{key}1"],
                       check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{net}.1/24", "dev", f"w{key}0"], check=True)
        work = tmp_path / f"cwd-{key}"
        work.mkdir()
        spaces[key] = (path, work, f"{net}.1/24")
    # The helper lives in netns h (same mount namespace as the callers).
    proc, sock = start_helper(tmp_path, prefix=("nsenter", f"--net={spaces['h'][0]}", "--"))
    rel = dict(env, CNM_STATE_DIR="relstate")
    conf = {"cniVersion": "1.0.0", "name": unique("hw"), "type": "cnm-host"}
    added = []
    try:
        def host_add(key):
            path, work, address = spaces[key]
            cid = unique("c")
            kw = dict(container_id=cid, netns=path, ifname="eth0", cwd=str(work),
                      prefix=("nsenter", f"--net={path}", "--"))
            rc, out, served = run("cnm-host", "ADD", conf, rel, socket_path=sock, **kw)
            assert rc == 0 and served, out
            added.append(kw)
            result = json.loads(out)
            assert sorted(i["name"] for i in result["interfaces"]) == [f"w{key}0", f"w{key}1"], (key, result)
            assert [ip["address"] for ip in result["ips"]] == [address], (key, result)
            assert (work / "relstate" / "cnm.db").exists()

        def failing_bridge_add(key):
            """Fails inside the caller's netns: the bridge name is taken by a veth there."""
            path, work, _ = spaces[key]
            bad = {"cniVersion": "1.0.0", "name": unique("hw"), "type": "cnm-bridge", "bridge": f"w{key}0"}
            rc, out, served = run("cnm-bridge", "ADD", bad, dict(rel, CNM_STATE_DIR="badstate"),
                                  socket_path=sock, container_id=unique("c"), netns=netns(), ifname="eth0",
                                  cwd=str(work), prefix=("nsenter", f"--net={path}", "--"))
            assert rc != 0 and served, out

        host_add("a")
        host_add("h")  # the helper's own netns, right after a foreign one
        failing_bridge_add("b")
        host_add("h")
        host_add("b")
        failing_bridge_add("a")
        host_add("b")
        host_add("a")
        # Requests in turn do not each take a thread: one worker (two if the first request came
        # while start_helper's probe connection was still being read) serves them all; the
        # preload thread ends once warm. (+1: the firewall watch, cli/nftwatch.py; +1: the
        # overlay scan, cli/overlaymesh.py; +1: the name service's sweep, drivers/dns/service.py.)
        deadline = time.monotonic() + 10
        while int(task_status(proc.pid, "Threads")) > 6:
            assert time.monotonic() < deadline, task_status(proc.pid, "Threads")
            time.sleep(0.05)
        # Between requests every thread is back home: the helper's netns, the root directory.
        home = os.stat(spaces["h"][0]).st_ino
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            assert os.stat(f"/proc/{proc.pid}/task/{task}/ns/net").st_ino == home, (
                task, {k: os.stat(v[0]).st_ino for k, v in spaces.items()}, (tmp_path / "cnmd.log").read_text())
            assert os.readlink(f"/proc/{proc.pid}/task/{task}/cwd") == "/"
        for kw in added:
            rc, out, served = run("cnm-host", "DEL", conf, rel, socket_path=sock, **kw)
            assert (rc, served) == (0, True), out
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_worker_pool_in_process(tmp_path, netns, monkeypatch):
    """The pool, driven through a real socket with a stand-in for handle(): requests run
    concurrently (a barrier all of them must reach together), each in its caller's netns and
    cwd; a request that leaves its thread in another netns and cwd and then raises does not
    leak into the next one; a worker that cannot be put back home ends instead of serving
    again; idle workers beyond KEEP_IDLE end."""
    from cni_plugins.cli import plugin
    from cni_plugins.cni.dispatch import Response
    from cni_plugins.linux import netns as nsmod
    from support.common import in_netns

    monkeypatch.setattr(cnmd, "KEEP_IDLE", 1)
    monkeypatch.setattr(cnmd, "IDLE_TIMEOUT", 0.3)
    barrier = threading.Barrier(4, timeout=20)
    elsewhere = netns()
    seen = []

    def fake_handle(name, env, stdin, netns_fd=None):
        seen.append((env["TAG"], threading.get_native_id(), str(nsmod.own_identity()), os.getcwd()))
        if env.get("WAIT"):
            barrier.wait()
        if env.get("LEAK"):  # leave the thread elsewhere, then fail
            fd = nsmod.open_netns(elsewhere)
            try:
                nsmod.setns(fd)
            finally:
                os.close(fd)
            os.chdir("/tmp")
            raise OSError("a request that failed half-way")
        return Response(stdout=env["TAG"].encode(), exit_code=0)

    monkeypatch.setattr(plugin, "handle", fake_handle)
    sock = cnmd.bind_socket(str(tmp_path / "pool.sock"))
    helper = cnmd.Helper(sock)
    server = threading.Thread(target=helper.serve_forever)
    server.start()
    spaces = [netns() for _ in range(4)]
    dirs = []
    for i in range(4):
        (tmp_path / f"d{i}").mkdir()
        dirs.append(str(tmp_path / f"d{i}"))

    def call(tag, ns, cwd, **extra):
        def client():
            cnmd.unshare_fs()  # this caller thread's own cwd
            os.chdir(cwd)
            env = {"CNI_COMMAND": "ADD", "CNI_NETNS": ns, "CNM_HELPER_SOCKET": str(tmp_path / "pool.sock"),
                   "TAG": tag, **extra}
            try:
                return thin.via_helper("cnm-none", env, b"{}")
            except thin.Committed:
                return "committed"
        return in_netns(ns, client)

    def record(tag):
        return next(s for s in seen if s[0] == tag)

    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda i: call(f"c{i}", spaces[i], dirs[i], WAIT="1"), range(4)))
        assert answers == [(f"c{i}".encode(), 0) for i in range(4)]
        assert len({record(f"c{i}")[1] for i in range(4)}) == 4  # four workers at once
        for i in range(4):
            assert record(f"c{i}")[2:] == (str(nsmod.identity_of(spaces[i])), dirs[i])
        # Idle workers beyond KEEP_IDLE end; those kept are at home between requests.
        deadline = time.monotonic() + 10
        while len(helper.workers) != 1:
            assert time.monotonic() < deadline, len(helper.workers)
            time.sleep(0.05)
        (kept,) = [t.native_id for t in helper.workers]
        assert os.stat(f"/proc/self/task/{kept}/ns/net").st_ino == helper.home.ino
        assert os.readlink(f"/proc/self/task/{kept}/cwd") == "/"
        # A request that fails after leaving its thread elsewhere (the caller gets EOF: committed).
        assert call("leak", spaces[0], dirs[0], LEAK="1") == "committed"
        assert record("leak")[1] == kept
        assert call("after", spaces[1], dirs[1]) == (b"after", 0)
        assert record("after")[1:] == (kept, str(nsmod.identity_of(spaces[1])), dirs[1])
        # A worker that cannot go home ends; the next request gets a new worker, in the right place.
        real_setns = nsmod.setns
        monkeypatch.setattr(nsmod, "setns", lambda fd: (_ for _ in ()).throw(OSError(1, "no"))
                            if fd == helper.home_fd else real_setns(fd))
        assert call("stuck", spaces[2], dirs[2]) == (b"stuck", 0)
        deadline = time.monotonic() + 10
        while any(t.native_id == kept for t in helper.workers):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.setattr(nsmod, "setns", real_setns)
        assert call("fresh", spaces[3], dirs[3]) == (b"fresh", 0)
        assert record("fresh")[1] != kept
        assert record("fresh")[2:] == (str(nsmod.identity_of(spaces[3])), dirs[3])
    finally:
        helper.stop()
        server.join(30)
        helper.close()
        sock.close()
    assert not server.is_alive() and not helper.workers


# ---- the helper's own checks, spoken to directly -------------------------------------------
def talk(sock_path, request: bytes, fds: list[int]) -> bytes:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
    tag = thin.recv_exact(s, 2)
    if tag == b"NO":
        (n,) = struct.unpack("!I", thin.recv_exact(s, 4))
        tag += thin.recv_exact(s, n)
    s.close()
    return tag


def own_fds(claim=True):
    """cwd, own netns and a claim token (already taken if not `claim`)."""
    token = thin.new_claim()
    if not claim:
        assert thin.take_claim(token)
    return [os.open(".", thin.O_PATH | os.O_DIRECTORY), os.open(thin.SELF_NET, os.O_RDONLY), token]


def test_namespace_of_another_kind_is_served_in_process(helper, env):
    """A namespace file that is no netns (/proc/self/ns/pid) is sent, refused by the helper
    (the thin path does not check its type) and answered in-process, byte for byte."""
    conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
    kw = dict(container_id="c1", netns="/proc/self/ns/pid", ifname="eth0")
    rc_h, out_h, served = run("cnm-none", "ADD", conf, env, socket_path=helper, **kw)
    rc_p, out_p, _ = run("cnm-none", "ADD", conf, env, socket_path="off", **kw)
    assert not served and rc_h != 0 and json.loads(out_h)["code"]
    assert (rc_h, out_h) == (rc_p, out_p)


def test_helper_refuses_another_build(helper, monkeypatch):
    fds = own_fds()
    try:
        ok = thin.encode_request("cnm-none", {"CNI_COMMAND": "VERSION"}, b"", False)
        assert talk(helper, ok, fds) == b"RS"
        monkeypatch.setattr(thin, "build_id", lambda: "1/0.0.1/older-install")
        old = thin.encode_request("cnm-none", {"CNI_COMMAND": "VERSION"}, b"", False)
        answer = talk(helper, old, fds)
        assert answer.startswith(b"NO") and b"build" in answer
    finally:
        for fd in fds:
            os.close(fd)


def test_checkout_helper_refuses_once_its_sources_change(tmp_path, monkeypatch):
    """A checkout's build id names its tree; the helper serving the tree refuses every request
    once a source in it changed (an edited .py, a new one, a new package), for good."""
    import shutil

    from support.common import ROOT

    tree = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "cni_plugins"), tree / "cni_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BIN, tree / "bin", symlinks=True)
    os.symlink(os.path.join(ROOT, ".venv"), tree / ".venv")
    sock = str(tmp_path / "cnmd.sock")
    log = open(tmp_path / "cnmd.log", "wb")
    proc = subprocess.Popen([str(tree / "bin" / "cnmd"), "--socket", sock], stdout=log, stderr=log)

    def ask() -> bytes:
        fds = own_fds()  # a claim token is good for one request
        try:
            return talk(sock, request, fds)
        finally:
            for fd in fds:
                os.close(fd)

    try:
        wait_listening(sock, proc, log=str(tmp_path / "cnmd.log"))
        monkeypatch.setattr(thin, "package_dir", lambda: str(tree / "cni_plugins"))
        request = thin.encode_request("cnm-none", {"CNI_COMMAND": "VERSION"}, b"", False)
        assert ask() == b"RS"
        os.makedirs(tree / "cni_plugins" / "cni" / "__pycache__", exist_ok=True)
        (tree / "cni_plugins" / "cni" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")  # not a source
        (tree / "cni_plugins" / "notes.txt").write_text("not a source either\n")
        assert ask() == b"RS"
        with open(tree / "cni_plugins" / "cni" / "log.py", "a") as f:
            f.write("# edited\n")
        answer = ask()
        assert answer.startswith(b"NO") and b"log.py changed" in answer, answer
        assert ask().startswith(b"NO")  # for good
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_helper_refuses_garbage_and_descriptors_not_the_callers(helper):
    fds = own_fds()
    try:
        other_dir = os.open("/", thin.O_PATH | os.O_DIRECTORY)
        req = thin.encode_request("cnm-none", {"CNI_COMMAND": "VERSION"}, b"", False)
        refused = cnmd.NOT_THE_HELPERS_CONTEXT.encode()
        assert talk(helper, req, [other_dir] + fds[1:]) == b"NO" + refused
        os.close(other_dir)
        req = thin.encode_request("cnm-none", {"CNI_COMMAND": "VERSION"}, b"", True)
        assert talk(helper, req, fds).startswith(b"NO")  # says netns, sends none
        assert talk(helper, b"GET / HTTP/1.0\r\n\r\n", fds).startswith(b"NO")
    finally:
        for fd in fds:
            os.close(fd)


def test_helper_never_runs_a_command_its_caller_took_back(helper, env, netns):
    """A caller that timed out takes the claim back and runs the command itself: the helper,
    reaching the request only then, must not run it too (no answer, nothing in the store)."""
    ns = netns()
    full = dict(env, CNI_COMMAND="ADD", CNI_CONTAINERID=unique("c"), CNI_NETNS=ns, CNI_IFNAME="eth0")
    conf = json.dumps({"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}).encode()
    req = thin.encode_request("cnm-none", full, conf, True)
    for claimed in (False, True):
        fds = own_fds(claim=not claimed) + [os.open(ns, os.O_RDONLY)]
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(helper)
            s.sendmsg([req], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
            answer = s.recv(1 << 16)
            s.close()
        finally:
            for fd in fds:
                os.close(fd)
        if claimed:
            assert answer == b""  # closed without running it
            db = os.path.join(env["CNM_STATE_DIR"], "cnm.db")
            import sqlite3

            assert not os.path.exists(db) or sqlite3.connect(db).execute(
                "SELECT COUNT(*) FROM sandboxes WHERE id != 'host'").fetchone()[0] == 0
        else:  # the same request, unclaimed, is run: proof the request itself was fine
            assert answer.startswith(b"RS\0\0\0\0"), answer
            assert run("cnm-none", "DEL", conf, env, socket_path=helper, container_id=full["CNI_CONTAINERID"],
                       netns=ns, ifname="eth0")[0] == 0


# ---- the client's fallbacks, against fake helpers ------------------------------------------
class FakeHelper:
    """Accepts, reads a request, then behaves as told: 'silent', 'refuse', 'claim-then-drop'."""

    def __init__(self, directory, mode):
        self.path = os.path.join(str(directory), "fake.sock")
        self.mode = mode
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.conns = []
        self.events: list[str] = []  # what the fake saw: said when a test fails
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                conn.settimeout(10)
                fields, fds = cnmd.read_request(conn)
                self.events.append(f"request with {len(fds)} descriptors")
                if self.mode == "refuse":
                    conn.sendall(b"NO" + struct.pack("!I", 4) + b"nope")
                elif self.mode == "claim-then-drop":
                    assert thin.take_claim(fds[2])
                    conn.close()
                for fd in fds:
                    os.close(fd)
            except (OSError, EOFError) as exc:
                self.events.append(f"{type(exc).__name__}: {exc}")

    def close(self):
        """Wake the accept (shutdown does, close alone does not) and wait for the thread: none
        outlives its test holding descriptor numbers that later tests reuse."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("mode", ["refuse", "silent"])
def test_refusing_or_silent_helper_falls_back(tmp_path, env, netns, mode):
    fake = FakeHelper(tmp_path, mode)
    try:
        ns = netns()
        conf = {"cniVersion": "1.0.0", "name": unique("hn"), "type": "cnm-none"}
        kw = dict(container_id=unique("c"), netns=ns, ifname="eth0")
        started = time.monotonic()
        rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=fake.path, **kw)
        assert rc == 0 and not served, out
        if mode == "silent":
            assert time.monotonic() - started >= thin.READY_TIMEOUT, fake.events
        assert run("cnm-none", "DEL", conf, env, socket_path=fake.path, **kw)[0] == 0
    finally:
        fake.close()


def test_helper_lost_after_commit(tmp_path, env, netns):
    """Once the helper claimed it, it owns the command: a lost ADD is error 11 (never run twice),
    DEL reruns."""
    fake = FakeHelper(tmp_path, "claim-then-drop")
    try:
        ns = netns()
        conf = {"cniVersion": "0.4.0", "name": unique("hn"), "type": "cnm-none"}
        kw = dict(container_id=unique("c"), netns=ns, ifname="eth0")
        rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=fake.path, **kw)
        assert rc == 1 and served
        err = json.loads(out)
        assert err["code"] == 11 and err["cniVersion"] == "0.4.0"
        rc, out, served = run("cnm-none", "DEL", conf, env, socket_path=fake.path, **kw)
        assert rc == 0 and not served, out
    finally:
        fake.close()


def test_stale_socket_is_replaced_and_live_one_kept(tmp_path):
    path = str(tmp_path / "cnmd.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on
    proc, sock = start_helper(tmp_path)
    try:
        second = subprocess.run([os.path.join(BIN, "cnmd"), "--socket", sock], capture_output=True, timeout=60)
        assert second.returncode != 0 and b"already listens" in second.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_cnmctl_daemon_serves_plugin_execs(tmp_path, env, netns):
    """`cnmctl daemon` is the same helper as cnmd: a plugin exec is served by it."""
    proc, sock = start_helper(tmp_path, ("cnmctl", "daemon"))
    try:
        path = netns()
        conf = {"cniVersion": "1.1.0", "name": "none", "type": "cnm-none"}
        rc, out, served = run("cnm-none", "ADD", conf, env, socket_path=sock, container_id="d1", netns=path,
                              ifname="lo")
        assert rc == 0 and served, out
        assert json.loads(out)["interfaces"][0]["name"] == "lo"
        rc, out, _ = run("cnm-none", "DEL", conf, env, socket_path=sock, container_id="d1", netns=path, ifname="lo")
        assert rc == 0, out
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
