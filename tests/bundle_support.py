"""The shipped bundle in tests: packaging/build.sh run once per label and session (two labels
are two builds with different build ids: an upgrade), install.sh/uninstall.sh, and plugin execs
from an installed prefix as a runtime makes them (a clean environment, no checkout involved).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from conftest import ROOT

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_built: dict[str, Path] = {}  # label -> release dir, shared by every test module of the session


def build(label: str, tmp_path_factory) -> Path:
    """The release directory of build `label` (dist/cnm-cni-VERSION-ARCH), built on first use."""
    if label not in _built:
        out = tmp_path_factory.mktemp(f"dist-{label}")
        proc = subprocess.run([os.path.join(ROOT, "packaging", "build.sh"), str(out)], capture_output=True,
                              timeout=1200)
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
