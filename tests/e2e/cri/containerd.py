"""A private containerd 1.6 with its CRI plugin, for end-to-end tests of the Kubernetes path.

Everything lives under one work dir (root, state, socket, config, logs, the pods' netns
bind mounts); the daemon runs in a throwaway "node" network namespace made for the test,
so the bridge, the NAT rules and the host ports it makes never touch the machine's own
network. `stop()` tears all of it down, also after a failed test: pods are removed through
the CRI (so their CNI DELs run), then leftover tasks, the daemon, its shims, mounts and
namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .client import CriClient

K8S_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin works in


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_toml(work: str, bin_dir: str, conf_dir: str, sandbox_image: str) -> str:
    s = _toml_str
    return f"""version = 2
root = {s(os.path.join(work, "root"))}
state = {s(os.path.join(work, "state"))}
# Snapshotters and exporters that cannot work here (or are not needed) stay off.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

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

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {s(sandbox_image)}
  # root here cannot lower oom_score_adj below its own: clamp instead of failing.
  restrict_oom_score_adj = true
  # the pods' netns bind mounts go under our state dir, not the node's /run/netns
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {s(bin_dir)}
    conf_dir = {s(conf_dir)}
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
    def __init__(self, work: str, bin_dir: str, conf_dir: str, sandbox_image: str, node_netns: str,
                 env: dict[str, str] | None = None):
        self.work = work
        self.bin_dir = bin_dir
        self.conf_dir = conf_dir
        self.sandbox_image = sandbox_image
        self.node_netns = node_netns  # name under /run/netns
        self.env = env or {}
        self.socket = os.path.join(work, "containerd.sock")
        self.config = os.path.join(work, "config.toml")
        self.log_path = os.path.join(work, "containerd.log")
        self.proc: subprocess.Popen | None = None
        self.client: CriClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> CriClient:
        os.makedirs(self.work, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(config_toml(self.work, self.bin_dir, self.conf_dir, self.sandbox_image))
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.node_netns}", "containerd", "--config", self.config],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        self.client = CriClient(self.socket)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if os.path.exists(self.socket):
                try:
                    self.client.version()
                    return self.client
                except Exception:  # CRI plugin not serving yet
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd's CRI did not come up in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", K8S_NAMESPACE, *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )

    def import_image(self, archive: str) -> None:
        self.ctr("image", "import", archive)

    def stop(self) -> None:
        """Tear down everything this daemon made, whatever state the test left it in."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.client is not None:
            self._remove_all_pods()
            self._remove_leftover_tasks()
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_shims()
        self._unmount_all()
        self.proc = None

    def _remove_all_pods(self) -> None:
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

    def _remove_leftover_tasks(self) -> None:
        tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self.ctr("tasks", "rm", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", container, check=False)

    def _kill_shims(self) -> None:
        """Shims outlive the daemon; ours name our socket on their command line. Kill them and their children."""
        shims = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]).startswith(b"containerd-shim") and self.socket.encode() in argv:
                shims.append(int(pid))
        for shim in shims:
            for child in _children(shim):
                _kill(child)
            _kill(shim)

    def _unmount_all(self) -> None:
        """Unmount (lazily, deepest first) everything mounted under the work dir: rootfs, netns pins, shm."""
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        prefix = self.work.rstrip("/") + "/"
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
