"""The attack pass on issue 21: what someone who did not write the issue-21 work found, each
reproduced here the way it was found (throwaway host netns, real traffic, real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni_plugins.cli import thin
from conftest import BIN, ROOT, unique, wait_listening

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
