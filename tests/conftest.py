"""Shared fixtures: throwaway network namespaces, a private state dir, plugin runners.

Every kernel object a test makes has a unique name and is removed afterwards,
also when the test fails. Tests never touch objects they did not create.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bin")
GO_PLUGINS = "/usr/lib/cni"
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_counter = itertools.count()


def unique(prefix: str, length: int = 15) -> str:
    """A kernel-object name no other test (or run) uses; at most `length` bytes."""
    tag = f"{os.getpid() % 10000:04d}{next(_counter):03d}{uuid.uuid4().hex}"
    return (prefix + tag)[:length]


def wait_listening(path: str, proc, timeout: float = 30, log=None) -> None:
    """Until a helper (`proc`) accepts connections on unix socket `path`; fails if it exits
    or takes longer than `timeout` seconds (with its log, when given)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, \
                (open(log).read() if log else "cnmd did not start")
            time.sleep(0.02)
        finally:
            probe.close()


def in_netns(path: str, fn, *args):
    """fn(*args) in a thread whose network namespace is `path` (pyroute2 and libnftables
    open their netlink sockets in the calling thread's netns; the test's own stays put)."""
    from cni_plugins.linux import netns as nsmod

    box: dict = {}

    def target():
        fd = nsmod.open_netns(path)
        try:
            nsmod.setns(fd)
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


# Helper mode (issue 7): with CNM_TEST_HELPER=1 one resident helper (bin/cnmd) serves every
# plugin exec of the session through the thin path, so the whole suite runs on both paths.
HELPER_SOCKET_ENV = "CNM_HELPER_SOCKET"


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


def store_id(env) -> str:
    """The id of the store in env's CNM_STATE_DIR ("" when there is none yet)."""
    from cni_plugins.cnm.store import Store

    return Store(env["CNM_STATE_DIR"]).id(create=False)


def pin_dir(env) -> str:
    """Where the store of env pins its sandboxes (cni_plugins/cnm/pins.py)."""
    from cni_plugins.cnm import pins

    return pins.pin_dir(env, store_id(env) or "none")


def pin_path(env, sandbox_id: str) -> str:
    from cni_plugins.cnm import pins

    return pins.pin_path(pin_dir(env), sandbox_id)


def pin_paths(env) -> list[str]:
    """Every pin under env's run dir, any store's (the epoch files left out)."""
    root = os.path.join(env["CNM_RUN_DIR"], "netns")
    found = []
    for here, _, files in os.walk(root):
        found += [os.path.join(here, f) for f in files if not f.startswith(".")]
    return sorted(found)


def pin_names(env) -> list[str]:
    """The names of the pins of env's store (its own pin directory)."""
    directory = pin_dir(env)
    return sorted(f for f in os.listdir(directory) if not f.startswith(".")) if os.path.isdir(directory) else []


class NetnsFactory:
    def __init__(self):
        self.made: list[str] = []

    def __call__(self, prefix: str = "cnmt") -> str:
        name = unique(prefix, 30)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        return f"/run/netns/{name}"

    def cleanup(self):
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def netns():
    """`netns()` makes a fresh named netns and returns its path; all are deleted afterwards."""
    factory = NetnsFactory()
    yield factory
    factory.cleanup()


class PluginRun:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.json = json.loads(proc.stdout) if proc.stdout.strip() else None

    def __repr__(self):
        return f"PluginRun(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr!r})"


def exec_plugin(plugin: str, command: str, config, env: dict, *, container_id: str = "", netns: str = "",
                ifname: str = "", args: str = "", extra_env: dict | None = None, directory: str = BIN,
                timeout: float = 120, host_netns: str = "") -> PluginRun:
    """Execute a plugin binary exactly as a runtime does: CNI_* env + config JSON on stdin.

    With `host_netns` the plugin runs in that netns (nsenter --net, mount ns unchanged),
    which then plays the host: its bridges, nftables and sysctls are the test's own.
    """
    full = dict(env)
    full.update(
        CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname, CNI_ARGS=args
    )
    full.update(extra_env or {})
    if HELPER_SOCKET_ENV in os.environ:
        full.setdefault(HELPER_SOCKET_ENV, os.environ[HELPER_SOCKET_ENV])
    stdin = config if isinstance(config, (bytes, bytearray)) else json.dumps(config).encode()
    argv = [os.path.join(directory, plugin)]
    if host_netns:
        argv = ["nsenter", f"--net={host_netns}", "--"] + argv
    proc = subprocess.run(argv, input=stdin, env=full, capture_output=True, timeout=timeout)
    return PluginRun(proc)


@pytest.fixture
def run_plugin(cnm_env):
    """run_plugin(plugin, command, config, container_id=..., netns=..., ifname=...) -> PluginRun."""

    def run(plugin, command, config, **kw):
        return exec_plugin(plugin, command, config, cnm_env, **kw)

    return run
