"""Which helper keeps the socket (issue 17's attack pass): a helper in another mount namespace,
two new cnmds replacing one helper at once, an older build against the installed one. Builds A
and B of the checkout (shared with test_upgrade.py); helpers started by hand on a private
socket, as an operator or a supervisor would.

Slow (PyInstaller builds): marked `slow`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from support.bundle import helpers, release_a, release_b  # noqa: F401 (fixtures)
from support.bundle import CLEAN_PATH, Helper, Node, build, build_id, doctor_helper_finding, exec_plugin, run_script
from cni_plugins.cli import handover
from support.common import unique

pytestmark = pytest.mark.slow


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path)
    yield n
    if n.installed():
        run_script(n.prefix / "cnm-cni" / "uninstall.sh")


def listener_pid(sock) -> int:
    listener = handover.probe(str(sock))
    assert listener is not None and listener.answered, listener
    return listener.pid


def exec_refusals(helper) -> list[str]:
    """The requests `helper` refused, other than probes of another build (a new cnmd's, or
    this test's own: handover.probe from the checkout) which every helper logs."""
    return [line for line in helper.text().splitlines()
            if "refused a request" in line and " != helper build " not in line]


def requests_served(helper) -> int:
    """Once `helper` stopped: how many requests it ran (its last log line says)."""
    helper.stop()
    return int(re.search(r"stopped after (\d+) requests", helper.text()).group(1))


def leftovers(sock) -> list[str]:
    """Temporary names of takeovers beside the socket (`.cnmd.sock.<pid>.new`, `.spare`)."""
    return [n for n in os.listdir(sock.parent) if n.startswith(f".{sock.name}.")]


def served(node, sock, tmp_path, netns_path) -> bool:
    """An ADD and DEL of cnm-none through the installed plugins and the helper on `sock`."""
    conf = {"cniVersion": "1.0.0", "name": "takeover", "type": "cnm-none"}
    env = dict(CNI_CONTAINERID=unique("c"), CNI_NETNS=netns_path, CNI_IFNAME="eth0",
               CNM_STATE_DIR=str(tmp_path / "st"), CNM_RUN_DIR=str(tmp_path / "run-state"),
               CNM_LOG_FILE=str(tmp_path / "cnm.log"), CNM_HELPER_SOCKET=str(sock))
    for command in ("ADD", "DEL"):
        rc, out, err = exec_plugin(node.prefix, "cnm-none", command, conf, **env)
        assert rc == 0, (command, out, err)
    return True


# ---- finding 5: a helper in another mount namespace -------------------------------------------
def test_helper_in_another_mount_namespace_is_reported_and_replaced(node, release_b, tmp_path, helpers, netns):
    """Attack on issue 26, finding 5: the installed cnmd started in a mount namespace of its own
    (`unshare -m --propagation slave`) holds the socket and refuses every exec of the node
    ("the caller's context is not the helper's": all run in-process). Before: doctor did not
    call it an error (it said ok before the caller's context was read from the kernel, a
    warning since), and the installed cnmd started correctly said "another helper already
    listens ... same build" and exited. Now doctor reports an error naming the mount namespace,
    and the correct cnmd replaces it: the foreign one drains and exits, execs are served."""
    assert node.install(release_b).returncode == 0
    sock = tmp_path / "run" / "cnmd.sock"
    cnmd = node.prefix / "cnm-cni" / "cnmd"
    foreign = helpers(cnmd, sock, tmp_path / "foreign.log",
                      wrap=("unshare", "-m", "--propagation", "slave")).wait_listening()
    finding = doctor_helper_finding(node.sbin / "cnmctl", sock, node.prefix, tmp_path)
    assert finding["severity"] == "error", finding
    assert "refuses callers like this one" in finding["message"] and "mnt" in finding["message"], finding
    assert str(cnmd) in finding["fix"], finding

    correct = helpers(cnmd, sock, tmp_path / "correct.log")
    assert foreign.proc.wait(timeout=120) == 0, (foreign.text(), correct.text())
    correct.wait_listening()
    assert correct.proc.poll() is None and listener_pid(sock) == correct.proc.pid, correct.text()
    assert served(node, sock, tmp_path, netns())
    assert not exec_refusals(correct) and "stopped after 0 requests" in foreign.text()
    finding = doctor_helper_finding(node.sbin / "cnmctl", sock, node.prefix, tmp_path)
    assert finding["severity"] == "ok" and str(correct.proc.pid) in finding["message"], finding
    assert requests_served(correct) == 2, correct.text()  # the ADD and the DEL
    assert not leftovers(sock)


# ---- finding 8: two cnmds replace one helper at once ------------------------------------------
def pending_connections(sock) -> int:
    out = subprocess.run(["ss", "-xlnH", "src", str(sock)], capture_output=True, text=True).stdout.split()
    return int(out[2]) if len(out) > 2 else 0


def test_two_cnmds_replacing_one_helper_leave_one(release_a, release_b, tmp_path, helpers):
    """Attack on issue 26, finding 8: a helper of build B serves; A's cnmd is started twice at
    once. Before: both logged "replacing the helper ..." and "... is served by this helper" and
    both stayed, each on its own `.cnmd.sock.<pid>.new`, only one reachable. Now the one whose
    socket the path does not name stops (exit 1) and cleans up its names: one A serves.
    B is held (SIGSTOP) until both A's have asked it who it is, so that both replace it."""
    sock = tmp_path / "run" / "cnmd.sock"
    for attempt in range(3):
        b = helpers(release_b / "cnm-cni" / "cnmd", sock, tmp_path / f"b{attempt}.log").wait_listening()
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            a1 = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / f"a1-{attempt}.log")
            a2 = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / f"a2-{attempt}.log")
            deadline = time.monotonic() + 60
            while pending_connections(sock) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert b.proc.wait(timeout=120) == 0 or "did not answer" in a1.text() + a2.text()
        if b.proc.returncode == 0 and "replacing the helper" in a1.text() and "replacing the helper" in a2.text():
            break  # both replaced it: the case under test (else a probe came late: once more)
        for h in (a1, a2):
            h.stop()
    else:
        pytest.fail("the two cnmds never replaced the helper together")

    deadline = time.monotonic() + 120  # one of them stops (before: both kept running)
    while a1.proc.poll() is None and a2.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert a1.proc.poll() is not None or a2.proc.poll() is not None, (a1.text(), a2.text())
    winner, loser = (a2, a1) if a1.proc.poll() is not None else (a1, a2)
    assert loser.proc.returncode == 1 and "another cnmd replaced" in loser.text(), loser.text()
    assert winner.proc.poll() is None and listener_pid(sock) == winner.proc.pid, winner.text()
    assert not leftovers(sock), leftovers(sock)


# ---- finding 9: an older build against the installed one --------------------------------------
def test_other_build_does_not_take_the_socket_from_the_installed_build(node, release_a, release_b, tmp_path,
                                                                       helpers, netns):
    """Attack on issue 26, finding 9: B installed, its cnmd serving; A's cnmd (a stale
    supervisor, an old image) starts. Before: A replaced B, and every exec of the installed
    plugins was refused and ran in-process. Now A exits and says why; B keeps the socket. The
    installed build still replaces a helper of another build (the upgrade)."""
    assert node.install(release_b).returncode == 0
    sock = tmp_path / "run" / "cnmd.sock"
    b = helpers(node.prefix / "cnm-cni" / "cnmd", sock, tmp_path / "b.log").wait_listening()
    a = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / "a.log")
    assert a.proc.wait(timeout=120) != 0, a.text()
    assert "the build its install runs" in a.text() and build_id(release_b) in a.text(), a.text()
    assert b.proc.poll() is None and listener_pid(sock) == b.proc.pid
    assert served(node, sock, tmp_path, netns()) and not exec_refusals(b)
    assert not leftovers(sock)
    assert requests_served(b) == 2, b.text()

    # The other way round: A serving, B (installed) replaces it.
    a = helpers(release_a / "cnm-cni" / "cnmd", sock, tmp_path / "a2.log").wait_listening()
    b = helpers(node.prefix / "cnm-cni" / "cnmd", sock, tmp_path / "b2.log")
    assert a.proc.wait(timeout=120) == 0
    b.wait_listening()
    assert listener_pid(sock) == b.proc.pid and served(node, sock, tmp_path, netns())
