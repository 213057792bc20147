"""A helper of another build never keeps the socket (issue 17 item 5), from a checkout: the
cnmd that starts takes the path over and the old one drains and exits; one that is not a cnmd
(systemd's socket) or of the same build is left alone. The bundle's version of this, with two
builds and an upgrade under load: test_upgrade.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from support.common import BIN, ROOT, wait_listening
from cni_plugins.cli import handover, thin

# What every cnmd before the takeover did, reduced to what the takeover relies on: it refuses a
# request of another build naming its own, and on SIGTERM it exits and unlinks its socket path
# whatever that names by then.
OLD_HELPER = """\
#!/usr/bin/python3 -I
import os, signal, socket, struct, sys
path = sys.argv[sys.argv.index("--socket") + 1]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(path)
sock.listen(16)
def stop(*_):
    os.unlink(path)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    conn, _ = sock.accept()
    data = conn.recv(65536)
    if len(data) < 16:  # a probe of whether it listens
        conn.close()
        continue
    build = data[16:16 + struct.unpack("!I", data[12:16])[0]].decode()
    reason = f"build {build} != helper build 2/0.0.9/old".encode()
    conn.sendall(b"NO" + struct.pack("!I", len(reason)) + reason)
    conn.close()
"""


def start(argv, log):
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdout=f, stderr=f)


def old_helper(tmp_path, name: str, sock) -> subprocess.Popen:
    directory = tmp_path / f"old-{name}"
    directory.mkdir()
    script = directory / name
    script.write_text(OLD_HELPER)
    script.chmod(0o755)
    proc = start([str(script), "--socket", str(sock)], tmp_path / f"old-{name}.log")
    wait_listening(str(sock), proc)
    return proc


def wait_log(log, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def served_by(sock, env, tmp_path) -> bool:
    """A plugin exec through `sock`, answered by the helper (not in-process)."""
    conf = {"cniVersion": "1.1.0", "name": "x", "type": "cnm-none"}
    proc = subprocess.run([os.path.join(BIN, "cnm-none")], input=json.dumps(conf).encode(),
                          env=dict(env, CNI_COMMAND="VERSION", CNM_HELPER_SOCKET=str(sock)), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc
    listener = handover.probe(str(sock))
    return listener is not None and not listener.other_build


@pytest.fixture
def stop_all():
    procs: list[subprocess.Popen] = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def test_takes_over_from_a_helper_of_another_build(tmp_path, cnm_env, stop_all):
    """Issue 17 item 5: a cnmd of this build starts while a helper of another build holds the
    socket (as every cnmd before it behaves: it refuses us, and on SIGTERM exits and unlinks
    the path, whatever it names by then). Before: "another helper already listens", the new
    cnmd exited and every exec ran in-process for good. Now the new one serves, the old one
    drained and exited, and the path names the new socket."""
    sock = tmp_path / "run" / "cnmd.sock"
    sock.parent.mkdir(mode=0o700)
    old = old_helper(tmp_path, "cnmd", sock)
    stop_all(old)
    new = start([os.path.join(BIN, "cnmd"), "--socket", str(sock)], tmp_path / "new.log")
    stop_all(new)
    assert old.wait(timeout=60) == 0
    wait_listening(str(sock), new, log=tmp_path / "new.log")
    log = (tmp_path / "new.log").read_text()
    assert f"replacing the helper pid {old.pid}" in log and "build 2/0.0.9/old" in log
    # Once the old one is gone, its unlink is undone: the path names the new helper's socket.
    wait_log(tmp_path / "new.log", "drained and exited")
    assert served_by(sock, cnm_env, tmp_path)
    assert sorted(os.listdir(sock.parent)) == ["cnmd.sock"]  # no temporary or spare name left
    new.send_signal(signal.SIGTERM)
    assert new.wait(timeout=60) == 0
    assert not sock.exists()


def test_takes_over_from_another_checkout(tmp_path, cnm_env, stop_all):
    """The same with real code on both sides: a helper of another checkout (another build id)."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(os.path.join(ROOT, "bin"), other / "bin", symlinks=True)
    shutil.copytree(os.path.join(ROOT, "cni_plugins"), other / "cni_plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(os.path.join(ROOT, ".venv"), other / ".venv")
    sock = tmp_path / "cnmd.sock"
    old = start([str(other / "bin" / "cnmctl"), "daemon", "--socket", str(sock)], tmp_path / "old.log")
    stop_all(old)
    wait_listening(str(sock), old, log=tmp_path / "old.log")
    new = start([os.path.join(BIN, "cnmd"), "--socket", str(sock)], tmp_path / "new.log")
    stop_all(new)
    assert old.wait(timeout=60) == 0
    wait_listening(str(sock), new, log=tmp_path / "new.log")
    assert "stopped after" in (tmp_path / "old.log").read_text()
    assert served_by(sock, cnm_env, tmp_path)


def test_leaves_a_socket_whose_listener_is_not_a_cnmd(tmp_path, stop_all):
    """A listener that refuses our build but is not a cnmd by its command line (systemd holds
    cnmd.socket: its pid is 1) is never signalled: the new cnmd says what to do and exits."""
    sock = tmp_path / "cnmd.sock"
    other = old_helper(tmp_path, "socket-holder", sock)
    stop_all(other)
    new = subprocess.run([os.path.join(BIN, "cnmd"), "--socket", str(sock)], capture_output=True, text=True,
                         timeout=120)
    assert new.returncode != 0 and "is not a cnmd" in new.stderr and "restart" in new.stderr, new.stderr
    assert other.poll() is None and sock.exists()


def test_probe_reads_the_helpers_answer(tmp_path, stop_all):
    """handover.probe: nothing (no file, a stale file), this build (the probe is not logged),
    another build (named), with the listener's pid."""
    sock = tmp_path / "cnmd.sock"
    assert handover.probe(str(sock)) is None
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()
    assert handover.probe(str(sock)) is None
    sock.unlink()
    helper = start([os.path.join(BIN, "cnmd"), "--socket", str(sock)], tmp_path / "h.log")
    stop_all(helper)
    wait_listening(str(sock), helper, log=tmp_path / "h.log")
    same = handover.probe(str(sock))
    assert same.pid == helper.pid and same.answered and not same.other_build and same.stoppable() is None
    other = handover.probe(str(sock), build_id="2/0.0.1/another")
    assert other.other_build and other.build == thin.build_id()
    assert "refused a request" in (tmp_path / "h.log").read_text()  # the other build's
    assert (tmp_path / "h.log").read_text().count("refused a request") == 1  # not the probe of this build


@pytest.mark.parametrize("argv, helper", [
    (["/opt/cni/bin/cnm-cni/cnmd", "--socket", "/run/cnm/cnmd.sock"], True),
    (["/usr/bin/python3", "-IS", "/src/bin/cnmd"], True),
    (["/usr/local/sbin/cnmctl", "--state-dir", "/x", "daemon"], True),
    (["cnmctl", "doctor"], False),
    (["/opt/cni/bin/cnm-bridge"], False),
    (["/sbin/init"], False),
    ([], False),
])
def test_is_helper_argv(argv, helper):
    assert handover.is_helper_argv(argv) is helper


def test_refusal_reasons():
    def reason(text):
        return handover.Listener("/x", 1234, text)

    assert reason("build 2/a != helper build 2/b").build == "2/b"
    assert reason("protocol 1, helper speaks 3").other_build
    assert reason("x.py changed under /src since the helper started").other_build
    for same in ("probe: helper build 2/a", "descriptors missing", "caller's mnt differs from the helper's"):
        assert not reason(same).other_build
    assert not reason(None).answered
