"""The shipped bundle in tests: packaging/build.sh run once per label and session (two labels
are two builds with different build ids: an upgrade), install.sh/uninstall.sh, and plugin execs
from an installed prefix as a runtime makes them (a clean environment, no checkout involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from support.common import ROOT, wait_listening

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CONFLIST = os.path.join(ROOT, "conf", "containerd", "10-cnm.conflist")
PLUGIN_LINKS = ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-ipam", "loopback")
_built: dict[str, Path] = {}  # label -> release dir, shared by every test module of the session


# Fixtures of the bundle tests (imported by their modules): the builds, made once per session.
@pytest.fixture(scope="module")
def release_a(tmp_path_factory):
    return build("A", tmp_path_factory)


@pytest.fixture(scope="module")
def release_b(tmp_path_factory):
    return build("B", tmp_path_factory)


def build(label: str, tmp_path_factory, revision: str | None = None) -> Path:
    """The release directory of build `label` (dist/cnm-cni-VERSION-ARCH), built on first use:
    of the checkout, or of git `revision` (its tree exported, built with its own build.sh and
    the checkout's virtualenv)."""
    if label not in _built:
        out = tmp_path_factory.mktemp(f"dist-{label}")
        root, env = ROOT, None
        if revision is not None:
            root = str(tmp_path_factory.mktemp(f"src-{label}"))
            archive = subprocess.run(["git", "-C", ROOT, "archive", revision], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
            os.symlink(os.path.join(ROOT, ".venv"), os.path.join(root, ".venv"))
            # The venv's editable install names the checkout's package: the export's comes first.
            env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.run([os.path.join(root, "packaging", "build.sh"), str(out)], capture_output=True,
                              timeout=1200, env=env)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        (release,) = [p for p in out.iterdir() if p.is_dir()]
        assert (out / f"{release.name}.tar.gz").is_file()
        _built[label] = release
    return _built[label]


def build_id(release: Path) -> str:
    return (release / "cnm-cni" / "_internal" / "cnm-build-id").read_text().strip()


def run_script(path, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(path), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={"PATH": CLEAN_PATH})


def exec_plugin(directory, plugin: str, command: str, conf, host_netns: str = "", **env) -> tuple[int, bytes, bytes]:
    """A runtime's exec of `directory/plugin`: a clean environment, the config on stdin."""
    full = {"PATH": CLEAN_PATH, "CNI_COMMAND": command, "CNI_PATH": str(directory), **env}
    argv = [os.path.join(str(directory), plugin)]
    if host_netns:
        argv = ["nsenter", f"--net={host_netns}", "--"] + argv
    proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=full, capture_output=True, timeout=300,
                          cwd="/")
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(root) -> dict[str, str]:
    """Every path under `root` with what it is: a link's target, a file's content, a directory."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def version_all(prefix) -> list[str]:
    """VERSION through every plugin link of `prefix`: what each failing one answered."""
    failed = []
    for plugin in PLUGIN_LINKS:
        rc, out, err = exec_plugin(prefix, plugin, "VERSION", {"cniVersion": "1.0.0"}, CNM_HELPER_SOCKET="off")
        if rc != 0 or b"supportedVersions" not in out:
            failed.append(f"{plugin}: rc={rc} {out[-300:]!r} {err[-300:]!r}")
    return failed


class Node:
    """A node's directories under a test's tmp dir, and its install commands (the documented ones)."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "node"
        self.prefix = self.root / "opt/cni/bin"
        self.netconf = self.root / "etc/cni/net.d"
        self.sbin = self.root / "usr/local/sbin"
        self.units = self.root / "etc/systemd/system"
        self.tmp = tmp_path
        self.root.mkdir()

    def install(self, release, *extra, conflist=CONFLIST) -> subprocess.CompletedProcess:
        return run_script(release / "install.sh", "--prefix", self.prefix, "--loopback", "--conflist", conflist,
                          "--netconf-dir", self.netconf, "--cnmctl-link", self.sbin, "--systemd",
                          "--systemd-dir", self.units, "--no-enable", *extra)

    def uninstall(self) -> subprocess.CompletedProcess:
        return run_script(self.prefix / "cnm-cni" / "uninstall.sh")

    def installed(self) -> bool:
        return any(p.exists() for p in (self.prefix / ".cnm-cni" / "manifest", self.prefix / ".cnm-cni.manifest"))

    def installed_build(self) -> str:
        """The build the prefix's cnmd says it is (the files a new exec runs)."""
        proc = subprocess.run([str(self.prefix / "cnm-cni" / "cnmd"), "--print-build-id"], capture_output=True,
                              text=True, env={"PATH": CLEAN_PATH}, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().rsplit("/", 1)[1]

    def conflist(self) -> dict:
        return json.loads((self.netconf / "10-cnm.conflist").read_text())

    def edit_pod_cidr(self, cidr: str) -> None:
        """As docs/operators.md says: set the installed list's ranges to the node's pod CIDR."""
        conf = self.conflist()
        conf["plugins"][0]["ipam"]["ranges"] = [[{"subnet": cidr}]]
        (self.netconf / "10-cnm.conflist").write_text(json.dumps(conf, indent=2) + "\n")


class Helper:
    """A cnmd started by hand (`cnmd --socket PATH`, or `cnmctl daemon`), its log kept; `wrap`
    runs it under another command (e.g. unshare)."""

    def __init__(self, executable, sock, log, daemon: bool = False, wrap: tuple = ()):
        self.sock, self.log = str(sock), log
        argv = [str(executable), "daemon", "--socket", self.sock] if daemon else [str(executable), "--socket", self.sock]
        with open(log, "ab") as f:
            self.proc = subprocess.Popen([*wrap, *argv], stdout=f, stderr=f, env={"PATH": CLEAN_PATH})

    def wait_listening(self):
        wait_listening(self.sock, self.proc, timeout=60, log=self.log)
        return self

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=400)

    def text(self) -> str:
        return open(self.log).read()


@pytest.fixture
def helpers():
    """helpers(executable, sock, log, daemon=False) starts a Helper; every one is stopped
    afterwards (resumed first, should the test have left it stopped)."""
    made: list[Helper] = []

    def start(*args, **kwargs) -> Helper:
        made.append(Helper(*args, **kwargs))
        return made[-1]

    yield start
    for h in made:
        if h.proc.poll() is None:
            os.kill(h.proc.pid, signal.SIGCONT)
        h.stop()


def doctor_helper_finding(cnmctl, sock, prefix, tmp_path) -> dict:
    """What `cnmctl doctor` (of an installed `cnmctl`) says of the helper on `sock`."""
    env = {"PATH": CLEAN_PATH, "CNM_HELPER_SOCKET": str(sock), "CNI_PATH": str(prefix),
           "NETCONFPATH": str(tmp_path / "no-configs"), "CNM_STATE_DIR": str(tmp_path / "doctor-state")}
    proc = subprocess.run([str(cnmctl), "doctor", "--format", "json"], capture_output=True, text=True, env=env,
                          timeout=300)
    (finding,) = [f for f in json.loads(proc.stdout) if f["check"] == "helper"]
    return finding
