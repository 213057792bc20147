"""A private containerd 1.6 for the e2e tests: own root, state, socket, config and log under one
work dir. With its CRI plugin on it serves one Node's pods (the daemon runs in the node's network
namespace, the plugins come from the node's CNI dirs and get its CNM store); with it off, it is
what `ctr run --cni` talks to. `stop()` tears all of it down, also after a failed test: pods are
removed through the CRI (so their CNI DELs run), then leftover tasks and containers, the daemon,
its shims and their children, and every mount under the work dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .host import base_env, children, kill, processes, sh, unmount_under

CRI_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in
ALWAYS_OFF = [  # snapshotters and exporters that cannot work here (or are not needed)
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_toml(work: str, cri: dict | None) -> str:
    """containerd's config; `cri`: bin_dir, conf_dir and sandbox_image of the CRI plugin (None: CRI off)."""
    s = _toml_str
    off = ALWAYS_OFF if cri else ["io.containerd.grpc.v1.cri", *ALWAYS_OFF]
    text = f"""version = 2
root = {s(os.path.join(work, "root"))}
state = {s(os.path.join(work, "state"))}
disabled_plugins = [{", ".join(s(p) for p in off)}]

[grpc]
  address = {s(os.path.join(work, "containerd.sock"))}

[ttrpc]
  address = {s(os.path.join(work, "containerd.sock.ttrpc"))}

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {s(os.path.join(work, "opt"))}
"""
    if not cri:
        return text
    return text + f"""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {s(cri["sandbox_image"])}
  # root here cannot lower oom_score_adj below its own: clamp instead of failing.
  restrict_oom_score_adj = true
  # the pods' netns bind mounts go under our state dir, not the node's /run/netns
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {s(cri["bin_dir"])}
    conf_dir = {s(cri["conf_dir"])}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc's state under our work dir too, not /run/containerd/runc
        Root = {s(os.path.join(work, "runc"))}
"""


class Containerd:
    def __init__(self, work: str, namespace: str = CRI_NAMESPACE, node=None, sandbox_image: str = ""):
        """CRI on when `node` is given: the daemon runs in its netns and serves its CNI dirs."""
        self.work = work
        self.namespace = namespace
        self.node = node
        self.sandbox_image = sandbox_image
        self.socket = os.path.join(work, "containerd.sock")
        self.config = os.path.join(work, "config.toml")
        self.log_path = os.path.join(work, "containerd.log")
        self.proc: subprocess.Popen | None = None
        self.client = None  # the CRI client, CRI on

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "Containerd":
        os.makedirs(self.work, exist_ok=True)
        cri = None
        argv = ["containerd", "--config", self.config]
        env = base_env()
        if self.node is not None:
            cri = {"bin_dir": self.node.bin_dir, "conf_dir": self.node.conf_dir, "sandbox_image": self.sandbox_image}
            argv = ["nsenter", f"--net={self.node.host}", *argv]
            # plugins inherit containerd's environment: the node's CNM store and run dir; always
            # in-process (a resident helper of the machine's netns could not serve this node anyway)
            env = self.node.env(CNM_HELPER_SOCKET="off")
        with open(self.config, "w") as f:
            f.write(config_toml(self.work, cri))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if cri:
            from .cri_client import CriClient

            self.client = CriClient(self.socket)
        deadline = time.monotonic() + timeout
        while not self._serving():
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not come up in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def _serving(self) -> bool:
        if self.client is None:
            return self.ctr("version", check=False).returncode == 0
        if not os.path.exists(self.socket):
            return False
        try:
            self.client.version()
            return True
        except Exception:  # CRI plugin not serving yet
            return False

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", self.socket, "--namespace", self.namespace, *args]

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return sh(*self.ctr_argv(*args), check=check, timeout=timeout)

    def import_image(self, archive: str) -> None:
        self.ctr("images", "import", archive)

    def containers(self) -> list[str]:
        return self.ctr("containers", "ls", "-q").stdout.split()

    def remove_container(self, cid: str) -> None:
        """Kill, delete the task and the container (and its snapshot), whatever state it is in."""
        self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        for _ in range(50):
            if self.ctr("tasks", "rm", "-f", cid, check=False).returncode != 0:
                break  # no task (any more)
            time.sleep(0.1)
        self.ctr("containers", "rm", cid, check=False)
        self.ctr("snapshots", "rm", cid, check=False)

    def stop(self) -> None:
        """Tear down everything this daemon made, whatever state the test left it in."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self._remove_all_pods()
                tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
                for cid in dict.fromkeys(tasks + self.ctr("containers", "ls", "-q", check=False).stdout.split()):
                    self.remove_container(cid)
            if self.client is not None:
                self.client.close()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._kill_shims()
            unmount_under(self.work)
            self.proc = None

    def _remove_all_pods(self) -> None:
        if self.client is None:
            return
        try:
            pods = self.client.list_pod_sandbox()
        except Exception:
            return
        for pod in pods:
            for call in (self.client.stop_pod_sandbox, self.client.remove_pod_sandbox):
                try:
                    call(pod.id)
                except Exception:
                    pass

    def _kill_shims(self) -> None:
        """Shims outlive the daemon; ours name our socket on their command line. Kill them, their
        process groups (a shim leads one with its tasks) and their children."""
        for shim in processes(b"containerd-shim", self.socket.encode()):
            for child in children(shim):
                kill(child)
            kill(shim, group=True)
