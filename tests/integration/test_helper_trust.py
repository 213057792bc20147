"""Whom the plugins trust with the host's namespaces, and the modes of what they create
(issue 21 items 2, 3, 4): directories made with an exact mode whatever the umask, cnmd never
changing a directory it did not make, and the thin path handing netns descriptors only to a
socket of root's, in directories only root can change, with root listening.

The "attacker" is uid 65534 (nobody), run with setpriv; every path is under a throwaway
directory of the test's."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from support.bridge import Lab
from support.common import BIN, exec_plugin, wait_listening

NOBODY = 65534
FORGED_ADDRESS = "6.6.6.6"

# A fake helper: binds PATH (as whoever runs it; "drop": as root, then becomes nobody before
# listen(), so the socket file is root's but its listener is not), then for each connection
# prints how many bytes and descriptors it received and answers a forged ADD result. A
# connection sending b"SENTINEL" (the test's own, after the plugin ran) ends it.
FORGER = r"""
import array, os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.bind(path)
except OSError as exc:
    print(f"bind-failed errno={exc.errno}", flush=True)
    sys.exit(0)
if mode == "drop":
    os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
s.listen(8)
print("ready", flush=True)
forged = b'{"cniVersion": "1.0.0", "ips": [{"address": "6.6.6.6/32"}]}'
while True:
    conn, _ = s.accept()
    conn.settimeout(30)
    fds = []
    try:
        data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(16 * 4))
    except OSError:
        data, anc = b"", []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    if data == b"SENTINEL":
        print("end", flush=True)
        break
    print(f"connection bytes={len(data)} fds={len(fds)}", flush=True)
    try:
        conn.sendall(b"RS" + (0).to_bytes(4, "big") + len(forged).to_bytes(4, "big") + forged)
    except OSError:
        pass
    conn.close()
"""


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def base():
    """A directory of root's that nobody may traverse (0755), outside pytest's 0700 tree."""
    path = tempfile.mkdtemp(prefix="cnm-trust-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def umask_000():
    """The runtime's umask 000: no mode of ours may come from it."""
    old = os.umask(0)
    yield
    os.umask(old)


class Forger:
    def __init__(self, path: str, as_nobody: bool = True):
        self.path = path
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"] if as_nobody else []
        self.proc = subprocess.Popen([*drop, sys.executable, "-c", FORGER, path, "keep" if as_nobody else "drop"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = self.proc.stdout.readline().strip()

    @property
    def listening(self) -> bool:
        return self.first == "ready"

    def connections(self) -> list[str]:
        """What it received (one line per connection) up to now; ends it."""
        import socket

        if self.listening:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(self.path)
            probe.sendall(b"SENTINEL")
            probe.close()
        out, err = self.proc.communicate(timeout=60)
        lines = [line for line in out.splitlines() if line.startswith("connection")]
        assert self.first in ("ready",) or self.first.startswith("bind-failed"), (self.first, err)
        return lines

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def forgers():
    made: list[Forger] = []

    def start(path: str, as_nobody: bool = True) -> Forger:
        f = Forger(path, as_nobody)
        made.append(f)
        return f

    yield start
    for f in made:
        f.stop()


def plugin_env(base: str, sock: str) -> dict:
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_PATH": BIN,
        "CNM_STATE_DIR": os.path.join(base, "state"),
        "CNM_RUN_DIR": os.path.join(base, "run"),
        "CNM_LOG_FILE": os.path.join(base, "cnm.log"),
        "CNM_HELPER_SOCKET": sock,
    }


CONF = {"cniVersion": "1.0.0", "name": "trust", "type": "cnm-none"}


def add_none(env: dict, ns: str, cid: str):
    return exec_plugin("cnm-none", "ADD", CONF, env, container_id=cid, netns=ns, ifname="eth0")


def assert_genuine(run) -> None:
    assert run.rc == 0, run
    assert FORGED_ADDRESS.encode() not in run.stdout, run
    assert run.json["interfaces"][0]["name"] == "lo", run  # cnm-none's own answer


def log_text(env: dict) -> str:
    try:
        with open(env["CNM_LOG_FILE"]) as f:
            return f.read()
    except FileNotFoundError:
        return ""


# ---- item 2: the run dir under umask 000, and who could squat in it --------------------------------
def test_umask_000_leaves_no_run_dir_others_can_write(base, umask_000, netns, forgers):
    """Issue 21 item 2: under the runtime's umask 000 the first ADD made the run dir 0777; an
    unprivileged user then bound the helper socket there, got the host's and the container's
    netns descriptors from the next root ADD and answered a forged result (returned, exit 0)."""
    sock = os.path.join(base, "run", "cnmd.sock")
    env = plugin_env(base, sock)
    first = add_none(env, netns(), "c1")
    assert_genuine(first)
    for d in ("run", "run/netns", "state"):
        assert mode(os.path.join(base, d)) == 0o700, d
    forger = forgers(sock)
    assert not forger.listening, forger.first  # nobody cannot even create the socket
    second = add_none(env, netns(), "c2")
    assert_genuine(second)
    assert forger.connections() == []
    for cid in ("c1", "c2"):
        assert exec_plugin("cnm-none", "DEL", CONF, env, container_id=cid, ifname="eth0").rc == 0


@pytest.mark.parametrize("dir_mode", [0o777, 0o1777])
def test_a_socket_squatted_by_another_user_gets_nothing(base, umask_000, netns, forgers, dir_mode):
    """Issue 21 item 2: a helper socket bound by another user (in a directory others can write:
    world-writable, or sticky like /tmp) is never sent a descriptor nor believed; the plugin
    runs in-process and logs why."""
    directory = os.path.join(base, "open")
    os.mkdir(directory)
    os.chmod(directory, dir_mode)
    sock = os.path.join(directory, "cnmd.sock")
    forger = forgers(sock)
    assert forger.listening, forger.first
    env = plugin_env(base, sock)
    run = add_none(env, netns(), "c1")
    assert_genuine(run)
    assert forger.connections() == []
    assert "helper socket not used" in log_text(env)
    assert exec_plugin("cnm-none", "DEL", CONF, env, container_id="c1", ifname="eth0").rc == 0


def test_a_root_socket_with_another_listener_gets_nothing(base, netns, forgers):
    """Issue 21 item 2: the socket file is root's and its directory root-only, but the process
    listening on it is not root (SO_PEERCRED): it is connected to, and sent nothing."""
    directory = os.path.join(base, "rootonly")
    os.mkdir(directory, 0o700)
    sock = os.path.join(directory, "cnmd.sock")
    forger = forgers(sock, as_nobody=False)
    assert forger.listening and os.stat(sock).st_uid == 0, forger.first
    env = plugin_env(base, sock)
    run = add_none(env, netns(), "c1")
    assert_genuine(run)
    assert forger.connections() == ["connection bytes=0 fds=0"]
    assert f"served by uid {NOBODY}" in log_text(env)
    assert exec_plugin("cnm-none", "DEL", CONF, env, container_id="c1", ifname="eth0").rc == 0


# ---- item 3: cnmd and the directory of its socket -------------------------------------------------
@pytest.mark.parametrize("how", ["--socket", "env"])
@pytest.mark.parametrize("parent_mode", [0o1777, 0o755])
def test_cnmd_leaves_an_existing_directory_as_it_was(base, parent_mode, how):
    """Issue 21 item 3: `cnmd --socket /run/x.sock` or CNM_HELPER_SOCKET=/tmp/x.sock left
    /run or /tmp at 0700 (and /tmp without its sticky bit)."""
    parent = os.path.join(base, "parent")
    os.mkdir(parent)
    os.chmod(parent, parent_mode)
    sock = os.path.join(parent, "x.sock")
    env = dict(os.environ)
    argv = [os.path.join(BIN, "cnmd")]
    if how == "--socket":
        argv += ["--socket", sock]
    else:
        env["CNM_HELPER_SOCKET"] = sock
    log = os.path.join(base, "cnmd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        wait_listening(sock, proc, log=log)
        assert mode(parent) == parent_mode
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert mode(parent) == parent_mode


def test_cnmd_makes_missing_directories_root_only(base, umask_000):
    """Issue 21 items 2-3: every directory cnmd makes for its socket is 0700, under umask 000."""
    sock = os.path.join(base, "a", "b", "cnmd.sock")
    log = os.path.join(base, "cnmd.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", sock], stdout=out, stderr=out)
    try:
        wait_listening(sock, proc, log=log)
        assert mode(os.path.join(base, "a")) == 0o700 and mode(os.path.join(base, "a", "b")) == 0o700
        assert mode(sock) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ---- item 2: every directory a bridge ADD makes ----------------------------------------------------
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_directories_have_their_mode_whatever_the_umask(netns, cnm_env, tmp_path, umask):
    """Issue 21 item 2: state, run (pins, route_localnet markers) and lease directories and all
    the parents an ADD makes: 0700 for ours, 0755 for host-local's lease directories (as Go
    host-local's MkdirAll(dir, 0755)), whatever the runtime's umask; never 0777."""
    env = dict(cnm_env, CNM_STATE_DIR=str(tmp_path / "s1" / "s2" / "state"),
               CNM_RUN_DIR=str(tmp_path / "r1" / "run"))
    lab = Lab(netns, env, tmp_path, ipam_type="cnm-ipam")
    lab.data_dir = str(tmp_path / "d1" / "d2" / "ipam")
    conf = lab.conf(capabilities={"portMappings": True}, isDefaultGateway=True)
    conf["runtimeConfig"] = {"portMappings": [{"hostPort": 8095, "containerPort": 80}]}
    c = lab.container()
    old = os.umask(umask)
    try:
        lab.add(conf, c, cid="c1")
    finally:
        os.umask(old)
    expected = {
        "s1": 0o700, "s1/s2": 0o700, "s1/s2/state": 0o700,
        "r1": 0o700, "r1/run": 0o700, "r1/run/netns": 0o700, "r1/run/route_localnet": 0o700,
        "d1": 0o755, "d1/d2": 0o755, "d1/d2/ipam": 0o755, f"d1/d2/ipam/{lab.network}": 0o755,
    }
    markers = tmp_path / "r1" / "run" / "route_localnet"  # and everything under it (per netns, per bridge)
    below = [os.path.relpath(here, tmp_path) for here, _dirs, _files in os.walk(markers)][1:]
    assert below
    expected.update({d: 0o700 for d in below})
    assert {d: oct(mode(tmp_path / d)) for d in expected} == {d: oct(m) for d, m in expected.items()}
    assert lab.run("DEL", conf, c, cid="c1").rc == 0
