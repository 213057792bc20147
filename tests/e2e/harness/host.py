"""The machine side of the e2e tests: where things are, commands inside a network namespace,
the runtimes' environment, mounts and processes to clean up, HTTP probes.

Every runtime runs inside a throwaway "host" network namespace made for the test
(`nsenter --net`, mount namespace unchanged), so the bridges, nftables tables and
sysctls our plugins make belong to the test; the runtimes' own state (containerd root,
podman storage, our CNM store, IPAM leases) lives in the test's temp dir.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
BIN = os.path.join(ROOT, "bin")
CONF = os.path.join(ROOT, "conf")
GO_PLUGINS = "/usr/lib/cni"
TOOLS_BIN = os.environ.get("CNM_TOOLS_DIR") or os.path.join(ROOT, ".tools", "bin")
LIBCNI_DIR = "/var/lib/cni"  # libcni's cache (results/) for cnitool, podman and the CRI: not movable
OUR_TYPES = ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-macvlan", "cnm-overlay", "cnm-ipam")
_tools_ready = False


def ensure_e2e_tools() -> None:
    """Install what the e2e tests need (Debian packages, cnitool) once per session."""
    global _tools_ready
    if _tools_ready:
        return
    proc = subprocess.run([os.path.join(ROOT, "scripts", "e2e-setup.sh")], capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"scripts/e2e-setup.sh failed:\n{proc.stdout}\n{proc.stderr}"
    _tools_ready = True


def sh(*argv: str, ns: str = "", env: dict | None = None, check: bool = True, timeout: float = 90,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (inside netns path `ns` when given); a failure shows its output."""
    cmd = list(argv)
    if ns:
        cmd = ["nsenter", f"--net={ns}", "--"] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def base_env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update(extra)
    return env


def http_get_from(ns: str, ip: str, port: int, timeout: float = 3) -> str:
    """GET / from inside netns `ns` ("" on any failure). busybox nc, as Debian has no nc by default;
    bounded by a timeout, since a reserved but unserved port (podman holds its -p ports) never answers."""
    argv = ["nsenter", f"--net={ns}", "--", "busybox", "nc", "-w", "2", ip, str(port)]
    try:
        proc = subprocess.run(argv, input=b"GET / HTTP/1.0\r\n\r\n", capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout.decode(errors="replace")


def wait_for_http(ns: str, ip: str, port: int, expect: str, seconds: float = 8) -> str:
    """Poll GET / until the body contains `expect` or time runs out; the last answer."""
    deadline = time.monotonic() + seconds
    while True:
        body = http_get_from(ns, ip, port)
        if expect in body or time.monotonic() > deadline:
            return body
        time.sleep(0.25)


def mounts_under(prefix: str) -> list[str]:
    prefix = prefix.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def unmount_under(prefix: str) -> None:
    """Lazily unmount everything mounted below `prefix`, deepest first (rootfs, netns pins, shm)."""
    for point in sorted(mounts_under(prefix), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def processes(name: bytes, mark: bytes) -> list[int]:
    """Pids of the processes whose executable is called `name`* and one of whose arguments holds `mark`
    (our shims and conmons outlive their daemon; they carry our socket or storage path)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]).startswith(name) and any(mark in a for a in argv):
            found.append(int(pid))
    return found


def children(pid: int) -> list[int]:
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


def kill(pid: int, group: bool = False) -> None:
    """SIGKILL a process (and, with `group`, the process group it leads)."""
    for send in ((os.killpg, os.kill) if group else (os.kill,)):
        try:
            send(pid, signal.SIGKILL)
        except OSError:
            pass
