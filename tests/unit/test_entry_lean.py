"""The entry path stays lean (DESIGN.md §5, issue 2 item 8): VERSION, the about line and
every early error are answered without importing pyroute2 or pydantic (nor typing,
dataclasses or inspect)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")
PYTHON = "/usr/bin/python3"  # the interpreter of bin/cnm's shebang
HEAVY = ("pyroute2", "pydantic", "dns")  # dns: dnspython, the name server's (cnmd only)
# Stdlib modules that cost as much (typing ~4.5 ms, dataclasses with inspect ~10 ms of a
# ~30 ms in-process VERSION): the protocol layer (cni/request, cni/dispatch, cni/log) uses neither.
HEAVY_STDLIB = ("typing", "dataclasses", "inspect")
CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "cnm-none"}
ATTACH = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent/netns", "CNI_IFNAME": "eth0", "CNI_PATH": BIN}

CASES = {
    "version": ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.1.0"}', 0),
    "version-dummy-empty-stdin": ({"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_IFNAME": "dummy"}, b"", 0),
    "about": ({}, b"", 0),
    "bad-json": ({"CNI_COMMAND": "ADD", **ATTACH}, b'{"cniVersion":', 6),
    "missing-env": ({"CNI_COMMAND": "ADD"}, json.dumps(CONF).encode(), 4),
    "unknown-command": ({"CNI_COMMAND": "FROB", **ATTACH}, json.dumps(CONF).encode(), 4),
    "unsupported-version": ({"CNI_COMMAND": "ADD", **ATTACH}, json.dumps(dict(CONF, cniVersion="1.0.1")).encode(), 1),
    "bad-ifname": ({"CNI_COMMAND": "ADD", **dict(ATTACH, CNI_IFNAME="a/b")}, json.dumps(CONF).encode(), 4),
    "check-too-old": ({"CNI_COMMAND": "CHECK", **ATTACH}, json.dumps(dict(CONF, cniVersion="0.3.1")).encode(), 1),
    "bad-cni-args": ({"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b", **ATTACH}, json.dumps(CONF).encode(), 4),
}


# In-process, as without a resident helper (cnmd): that is the path whose imports count.
NO_HELPER = {"CNM_HELPER_SOCKET": "off"}


def import_times(env: dict, stdin: bytes) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run bin/cnm-none as its shebang does, with -X importtime; the set of imported modules."""
    env = dict(env, **NO_HELPER)
    proc = subprocess.run([PYTHON, "-IS", "-X", "importtime", os.path.join(BIN, "cnm-none")], input=stdin,
                          env=env, capture_output=True, timeout=60)
    modules = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return proc, modules


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_heavy_import_with_importtime(case):
    env, stdin, code = CASES[case]
    proc, modules = import_times(env, stdin)
    assert "cni_plugins.cli.plugin" in modules  # the measurement itself works
    assert not {m for m in modules if m.split(".")[0] in HEAVY}, sorted(modules)
    assert not modules & set(HEAVY_STDLIB), sorted(modules & set(HEAVY_STDLIB))
    if code == 0:
        assert proc.returncode == 0
    else:
        assert proc.returncode != 0 and json.loads(proc.stdout)["code"] == code


PROBE = """
import json, runpy, sys
sys.argv = [{plugin!r}]
try:
    runpy.run_path({plugin!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "pydantic"))
sys.stderr.write("\\nPROBE " + json.dumps({{"exit": code, "heavy": heavy}}) + "\\n")
"""


@pytest.mark.parametrize("case", ["version", "bad-json", "unsupported-version"])
def test_no_heavy_module_in_sys_modules(case):
    env, stdin, code = CASES[case]
    script = PROBE.format(plugin=os.path.join(BIN, "cnm-none"))
    proc = subprocess.run([PYTHON, "-IS", "-c", script], input=stdin, env=dict(env, **NO_HELPER),
                          capture_output=True, timeout=60)
    probe = json.loads(proc.stderr.decode().rsplit("PROBE ", 1)[1])
    assert probe["heavy"] == []
    assert (probe["exit"] == 0) == (code == 0)


def test_the_probe_would_see_a_heavy_import():
    """Control: a command that reaches the controller does import them (then fails on stateDir)."""
    stdin = json.dumps(dict(CONF, cniVersion="1.1.0", stateDir="relative")).encode()
    script = PROBE.format(plugin=os.path.join(BIN, "cnm-none"))
    proc = subprocess.run([PYTHON, "-IS", "-c", script], input=stdin, env={"CNI_COMMAND": "STATUS", **NO_HELPER},
                          capture_output=True, timeout=60)
    probe = json.loads(proc.stderr.decode().rsplit("PROBE ", 1)[1])
    assert "pydantic" in probe["heavy"]
