"""Every example conflist under conf/ (also ones added later) is one a runtime accepts:
valid list keys, and each plugin answers VERSION listing the list's exact cniVersion(s)
(CRI-O and podman skip a network when any plugin does not, cni-spec.md R44)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")
GO_PLUGINS = "/usr/lib/cni"
CONFLISTS = sorted(glob.glob(os.path.join(ROOT, "conf", "**", "*.conflist"), recursive=True))
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
SPEC_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def find_plugin(ptype: str) -> str:
    for directory in (BIN, GO_PLUGINS):
        path = os.path.join(directory, ptype)
        if os.path.isfile(path):
            return path
    raise AssertionError(f"plugin {ptype!r} is neither in bin/ nor in {GO_PLUGINS}")


def test_the_none_and_host_examples_exist():
    names = {os.path.relpath(p, os.path.join(ROOT, "conf")) for p in CONFLISTS}
    assert {"none.conflist", "host.conflist"} <= names


@pytest.mark.parametrize("path", CONFLISTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_conflist_plugins_answer_version_with_its_versions(path):
    with open(path, "rb") as f:
        conflist = json.load(f)
    assert NAME.fullmatch(conflist["name"]), conflist["name"]
    listed = {conflist["cniVersion"], *conflist.get("cniVersions", [])}
    assert listed <= set(SPEC_VERSIONS), listed
    assert conflist["plugins"] and all(isinstance(p.get("type"), str) and "/" not in p["type"]
                                       for p in conflist["plugins"])
    for plugin in conflist["plugins"]:
        exe = find_plugin(plugin["type"])
        for version in sorted(listed):
            # Exactly what libcni's GetVersionInfo sends.
            env = {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "dummy", "CNI_NETNS": "dummy",
                   "CNI_IFNAME": "dummy", "CNI_PATH": "dummy"}
            proc = subprocess.run([exe], input=json.dumps({"cniVersion": version}).encode(), env=env,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 0, (plugin["type"], proc)
            info = json.loads(proc.stdout)
            assert version in info["supportedVersions"], (plugin["type"], version, info)
