"""Modes of what we write (issue 8): state files 0600, state directories 0700, the helper
socket root-only -- whatever umask the runtime runs the plugin with."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from support.bridge import Lab
from support.common import pin_dir, BIN


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def permissive_umask():
    """A runtime with umask 000: our modes must not come from the caller's umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_state_files_and_dirs(netns, cnm_env, tmp_path, permissive_umask):
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    conf = lab.conf(version="1.1.0", ipMasq=True)
    c = lab.container()
    lab.add(conf, c, cid="c1")
    state = cnm_env["CNM_STATE_DIR"]
    assert mode(state) == 0o700
    files = [f for f in os.listdir(state)]
    assert "cnm.db" in files
    for name in files:
        path = os.path.join(state, name)
        if os.path.isfile(path):
            assert mode(path) == 0o600, (path, oct(mode(path)))
        else:
            assert mode(path) == 0o700, path
    pins = os.path.join(cnm_env["CNM_RUN_DIR"], "netns")
    assert mode(pins) == 0o700  # the pins (nsfs mounts) are reachable only through it
    assert mode(pin_dir(cnm_env)) == 0o700
    leases = os.path.join(lab.data_dir, lab.network)
    lease_files = [f for f in os.listdir(leases) if f[0].isdigit()]
    assert lease_files
    for name in lease_files:
        assert mode(os.path.join(leases, name)) == 0o600
    # host-local's own layout: the lease directory is 0755 so Go host-local can share it
    assert mode(leases) == 0o755
    assert lab.run("DEL", conf, c, cid="c1").rc == 0


def test_helper_socket_is_root_only(tmp_path, permissive_umask):
    directory = tmp_path / "helper"
    sock = directory / "cnmd.sock"
    log = open(tmp_path / "cnmd.log", "wb")
    proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", str(sock)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cnmd.log").read_text()
            time.sleep(0.05)
        st = os.lstat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        assert mode(str(directory)) == 0o700
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_helper_refuses_a_too_open_directory_and_leaves_it(tmp_path, permissive_umask):
    """A directory others can write is not ours to chmod (issue 21 item 3), and the plugins
    would not trust a socket in it (cli/thin.py untrusted): cnmd says so and exits."""
    directory = tmp_path / "open"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    sock = directory / "cnmd.sock"
    proc = subprocess.run([os.path.join(BIN, "cnmd"), "--socket", str(sock)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "would not use a socket there" in proc.stderr, proc
    assert mode(str(directory)) == 0o777 and not sock.exists()
