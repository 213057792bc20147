"""Helpers every kind of test uses: unique names, plugin execs as a runtime makes them,
namespaces, the store's pins. Import them from here (conftest.py holds only fixtures)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")
GO_PLUGINS = "/usr/lib/cni"
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_counter = itertools.count()

# With CNM_TEST_HELPER=1 one resident helper (bin/cnmd) serves every plugin exec of the session
# through the thin path (conftest.py's cnm_helper), so the whole suite runs on both paths.
HELPER_SOCKET_ENV = "CNM_HELPER_SOCKET"


def unique(prefix: str, length: int = 15) -> str:
    """A kernel-object name no other test (or run) uses; at most `length` bytes."""
    tag = f"{os.getpid() % 10000:04d}{next(_counter):03d}{uuid.uuid4().hex}"
    return (prefix + tag)[:length]


def wait_listening(path: str, proc, timeout: float = 30, log=None) -> None:
    """Until a helper (`proc`) accepts connections on unix socket `path`; fails if it exits
    or takes longer than `timeout` seconds (with its log, when given)."""
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

