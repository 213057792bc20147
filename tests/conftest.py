"""Shared fixtures: throwaway network namespaces, a private state dir, plugin runners.
(The helpers they use live in support/common.py; tests import them from there.)

Every kernel object a test makes has a unique name and is removed afterwards,
also when the test fails. Tests never touch objects they did not create.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from support.common import (  # noqa: F401  (tests written before support/ import them from here)
    ALL_VERSIONS, BIN, GO_PLUGINS, HELPER_SOCKET_ENV, ROOT, NetnsFactory, PluginRun, exec_plugin, in_netns,
    pin_dir, pin_names, pin_path, pin_paths, store_id, unique, wait_listening,
)


@pytest.fixture(scope="session", autouse=True)
def unmount_leftover_pins(tmp_path_factory):
    """A test that fails before its DEL leaves its sandbox pins (bind mounts of netns) under its
    tmp dir, where they would hold those netns for good: at the end of the session, whatever
    is still mounted below the session's base temp dir is detached."""
    base = str(tmp_path_factory.getbasetemp()) + "/"
    yield
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(base)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="session", autouse=True)
def cnm_helper(tmp_path_factory):
    """The session's helper socket (CNM_TEST_HELPER=1), else None (plugins run in-process)."""
    if os.environ.get("CNM_TEST_HELPER") != "1":
        yield None
        return
    directory = tmp_path_factory.mktemp("cnmd")
    sock = str(directory / "cnmd.sock")
    log = open(directory / "cnmd.log", "wb")
    proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", sock], stdout=log, stderr=log)
    wait_listening(sock, proc, log=directory / "cnmd.log")
    os.environ[HELPER_SOCKET_ENV] = sock
    yield sock
    os.environ.pop(HELPER_SOCKET_ENV, None)
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


@pytest.fixture
def cnm_env(tmp_path):
    """Environment for a plugin exec: private state, run dirs and log, our bin and the Go plugins on CNI_PATH."""
    state = tmp_path / "state"
    run = tmp_path / "run"
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_PATH": f"{BIN}:{GO_PLUGINS}",
        "CNM_STATE_DIR": str(state),
        "CNM_RUN_DIR": str(run),
        "CNM_LOG_FILE": str(tmp_path / "cnm-cni.log"),  # the plugin log (cni/log.py), not /var/log's
    }
    if HELPER_SOCKET_ENV in os.environ:
        env[HELPER_SOCKET_ENV] = os.environ[HELPER_SOCKET_ENV]
    yield env
    # Pins of sandboxes a failed test left behind are ours: unmount them.
    for path in pin_paths(env):
        subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture
def netns():
    """`netns()` makes a fresh named netns and returns its path; all are deleted afterwards."""
    factory = NetnsFactory()
    yield factory
    factory.cleanup()


@pytest.fixture
def run_plugin(cnm_env):
    """run_plugin(plugin, command, config, container_id=..., netns=..., ifname=...) -> PluginRun."""

    def run(plugin, command, config, **kw):
        return exec_plugin(plugin, command, config, cnm_env, **kw)

    return run
