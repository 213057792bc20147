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

from support.common import ROOT, unique

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


# ---- the code says whether a retry can work ------------------------------------------------------
def venv_without(checkout, *packages) -> None:
    """The copy's .venv: the checkout's site-packages less `packages` (links to the rest)."""
    real = os.path.realpath(checkout / ".venv")
    (checkout / ".venv").unlink()
    (site,) = [os.path.join(dirpath) for dirpath, dirs, _ in os.walk(os.path.join(real, "lib"))
               if dirpath.endswith("site-packages")]
    copy = checkout / os.path.relpath(site, os.path.dirname(real))
    copy.mkdir(parents=True)
    for entry in os.listdir(site):
        if entry.split("-")[0].split(".")[0] not in packages:
            os.symlink(os.path.join(site, entry), copy / entry)


def test_missing_dependency_is_not_retried(checkout, tmp_path, netns):
    """Attack on issue 26, finding 10: a dependency of the node missing (the checkout's
    pydantic not installed) is not cured by a retry. Before: code 11 "retry" like a module of
    ours mid-install, so the runtime retried for ever. Now code 104 naming the module."""
    venv_without(checkout, "pydantic", "pydantic_core")
    conf = {"cniVersion": "1.0.0", "name": unique("n"), "type": "cnm-none"}
    proc = run(checkout, "cnm-none", "ADD", conf, netns(), tmp_path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr, proc
    answer = json.loads(proc.stdout)
    assert answer["code"] == 104 and answer["msg"] == "cnm-cni cannot run on this node", answer
    assert "pydantic" in answer["details"] and "retry will not help" in answer["details"], answer


def test_unreadable_module_is_an_io_failure(checkout, tmp_path, netns):
    """Attack on issue 26, finding 10: a module of ours that exists but cannot be read
    (mode 000, read by a root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH) is an I/O
    failure, code 5, not "retry" (code 11 before)."""
    (checkout / "cni_plugins" / "controller.py").chmod(0)
    conf = {"cniVersion": "1.0.0", "name": unique("n"), "type": "cnm-none"}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": unique("c"),
           "CNI_NETNS": netns(), "CNI_IFNAME": "eth0", "CNI_PATH": str(checkout / "bin"),
           "CNM_STATE_DIR": str(tmp_path / "st"), "CNM_RUN_DIR": str(tmp_path / "run"),
           "CNM_LOG_FILE": str(tmp_path / "cnm.log"), "CNM_HELPER_SOCKET": "off"}
    drop = "-dac_override,-dac_read_search"
    proc = subprocess.run(["setpriv", "--inh-caps", drop, "--bounding-set", drop, str(checkout / "bin" / "cnm-none")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr, proc
    answer = json.loads(proc.stdout)
    assert answer["code"] == 5 and answer["msg"] == "cnm-cni cannot read its code", answer
    assert "PermissionError" in answer["details"] and "controller.py" in answer["details"], answer


def test_status_that_cannot_load_is_not_available(checkout, tmp_path, netns):
    """Attack on issue 26, finding 10: STATUS answers only 50 or 51 (CNI 1.1). Before: a
    STATUS whose code could not load answered 11. Now 50: the plugin cannot serve ADD."""
    (checkout / "cni_plugins" / "controller.py").unlink()
    conf = {"cniVersion": "1.1.0", "name": unique("n"), "type": "cnm-none"}
    proc = run(checkout, "cnm-none", "STATUS", conf, netns(), tmp_path)
    assert proc.returncode == 1 and b"Traceback" not in proc.stdout + proc.stderr, proc
    answer = json.loads(proc.stdout)
    assert answer["code"] == 50 and answer["msg"] == "cnm-cni cannot load its code", answer
