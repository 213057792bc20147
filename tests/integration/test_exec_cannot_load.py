"""An exec that cannot load its code answers a CNI error, never a traceback (issue 17 item 3),
from a checkout whose files are incomplete (a copy of bin/ and cni_plugins/ with modules
removed): code 11, since a retry finds whole files once the update is done. The bundle's
version of this (PyInstaller's entry point, stdlib modules missing): test_upgrade.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, unique

ENTRY_POINTS = (os.path.join(ROOT, "bin", "cnm"), os.path.join(ROOT, "packaging", "entry.py"))
SHARED = re.compile(r"# ---- the answer when the code cannot be loaded.*?# ---- end of the shared text\n", re.S)


@pytest.fixture
def checkout(tmp_path):
    """A copy of the checkout's plugins (bin/, cni_plugins/, its .venv) to take files away from."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(os.path.join(ROOT, "bin"), root / "bin", symlinks=True)
    shutil.copytree(os.path.join(ROOT, "cni_plugins"), root / "cni_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    os.symlink(os.path.join(ROOT, ".venv"), root / ".venv")
    return root


def run(root, plugin, command, conf, netns_path, tmp_path, argv0=None):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": unique("c"),
           "CNI_NETNS": netns_path, "CNI_IFNAME": "eth0", "CNI_PATH": str(root / "bin"),
           "CNM_STATE_DIR": str(tmp_path / "st"), "CNM_RUN_DIR": str(tmp_path / "run"),
           "CNM_LOG_FILE": str(tmp_path / "cnm.log"), "CNM_HELPER_SOCKET": "off"}
    return subprocess.run([str(root / "bin" / plugin)], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize("missing", [
    "cni_plugins/controller.py",  # loaded once the config is valid
    "cni_plugins/cni/dispatch.py",  # loaded by the thin path before anything runs in-process
    "cni_plugins/cli/thin.py",  # the entry point's first import
    "cni_plugins/__init__.py",  # the package itself
])
def test_missing_module_is_error_11(checkout, tmp_path, netns, missing):
    """Before: a Python traceback on stderr and nothing on stdout (or code 199 for a module the
    command loads late). Now: a CNI error object, code 11, naming the missing module."""
    (checkout / missing).unlink()
    conf = {"cniVersion": "0.4.0", "name": unique("n"), "type": "cnm-none"}
    proc = run(checkout, "cnm-none", "ADD", conf, netns(), tmp_path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr, proc
    answer = json.loads(proc.stdout)
    assert answer["code"] == 11 and answer["cniVersion"] == "0.4.0", answer
    assert answer["msg"] == "cnm-cni cannot load its code" and "retry" in answer["details"], answer


def test_half_written_module_is_error_11(checkout, tmp_path, netns):
    """A module cut short by a copy in progress fails inside the import system (SyntaxError):
    the same answer."""
    path = checkout / "cni_plugins" / "controller.py"
    path.write_bytes(path.read_bytes()[:1000])
    conf = {"cniVersion": "1.1.0", "name": unique("n"), "type": "cnm-none"}
    proc = run(checkout, "cnm-none", "ADD", conf, netns(), tmp_path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr, proc
    assert json.loads(proc.stdout)["code"] == 11


def test_helper_says_what_is_missing(checkout):
    """cnmd (the multi-call executable under that name) without its code: one line on stderr,
    no traceback, exit 1."""
    (checkout / "cni_plugins" / "cli" / "cnmd.py").unlink()
    proc = subprocess.run([str(checkout / "bin" / "cnmd"), "--print-build-id"], capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"cnmd: cannot load cnm-cni" in proc.stderr, proc
    assert b"Traceback" not in proc.stderr


def test_entry_points_share_the_answer():
    """bin/cnm (a checkout) and packaging/entry.py (the bundle) answer alike: same text."""
    first, second = (SHARED.search(open(path).read()).group(0) for path in ENTRY_POINTS)
    assert first == second
