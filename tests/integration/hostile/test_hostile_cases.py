"""Hostile input, table-driven; the properties (hypothesis) are in test_hostile_properties.py.

Protocol cases (cnm-none, cnm-host, loopback): bad input gives one CNI error object on stdout, the right code, a non-zero exit, no
traceback, and changes nothing (no store content, no pin, the netns untouched).

Every case runs twice: through the bin/ executable exactly as a runtime execs it, and
in-process through cni_plugins.cli.plugin.handle().

cnm-bridge through its executable (a sample; test_hostile_properties.py runs the 10,000
in process): real netns, so an ADD can succeed. Invalid names are refused with a
CNI error and nothing half-made; odd but valid names work and land in nftables only as
data (nft JSON), never as syntax.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from support.bridge import Lab, sh
from cni_plugins.cli.plugin import handle
from cni_plugins.cni.request import MAX_STDIN
from support.common import BIN

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "cnm-none"}


def conf(**kw) -> bytes:
    return json.dumps(dict(CONF, **kw)).encode()


# name -> (env changes, stdin, expected code)
CASES = {
    "malformed-json": ({}, b'{"cniVersion": "1.0.0", "name": ', 6),
    "trailing-garbage": ({}, conf() + b"}", 6),
    "empty-stdin": ({}, b"", 6),
    "array-stdin": ({}, b"[]", 6),
    "string-stdin": ({}, b'"cnm"', 6),
    "null-stdin": ({}, b"null", 6),
    "number-stdin": ({}, b"1e999", 6),
    "non-utf8": ({}, b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', 6),
    "utf16": ({}, json.dumps(CONF).encode("utf-16"), 6),
    "nan": ({}, conf()[:-1] + b', "mtu": NaN}', 6),
    "deeply-nested-array": ({}, b"[" * 200000 + b"]" * 200000, 6),
    "deeply-nested-object": ({}, b'{"a":' * 100000 + b"1" + b"}" * 100000, 6),
    "nested-in-runtime-config": ({}, conf()[:-1] + b', "runtimeConfig": ' + b'{"a":' * 100000 + b"1" + b"}" * 100000 + b"}", 6),
    "huge-stdin": ({}, conf(pad="x" * (MAX_STDIN + 10)), 5),
    "missing-containerid": ({"CNI_CONTAINERID": None}, conf(), 4),
    "missing-netns": ({"CNI_NETNS": ""}, conf(), 4),
    "missing-ifname": ({"CNI_IFNAME": None}, conf(), 4),
    "missing-command": ({"CNI_COMMAND": ""}, conf(), 4),  # in-process; the executable prints the about line
    "unknown-command": ({"CNI_COMMAND": "ATTACH"}, conf(), 4),
    "lowercase-command": ({"CNI_COMMAND": "add"}, conf(), 4),
    "unsupported-version": ({}, conf(cniVersion="1.0.1"), 1),
    "future-version": ({}, conf(cniVersion="2.0.0"), 1),
    "numeric-version": ({}, conf(cniVersion=1.0), 6),
    "bad-ifname-slash": ({"CNI_IFNAME": "eth/0"}, conf(), 4),
    "bad-ifname-long": ({"CNI_IFNAME": "a" * 16}, conf(), 4),
    "bad-ifname-dotdot": ({"CNI_IFNAME": ".."}, conf(), 4),
    "bad-ifname-space": ({"CNI_IFNAME": "eth 0"}, conf(), 4),
    "bad-ifname-colon": ({"CNI_IFNAME": "eth0:1"}, conf(), 4),
    "bad-containerid": ({"CNI_CONTAINERID": "../../etc"}, conf(), 4),
    "bad-containerid-newline": ({"CNI_CONTAINERID": "abc\n"}, conf(), 4),
    "bad-network-name": ({}, conf(name="../x"), 7),
    "missing-name": ({}, json.dumps({"cniVersion": "1.0.0", "type": "cnm-none"}).encode(), 7),
    "missing-type": ({}, json.dumps({"cniVersion": "1.0.0", "name": "n"}).encode(), 7),
    "ipam-not-object": ({}, conf(ipam="host-local"), 7),
    "prev-result-not-object": ({}, conf(prevResult=[1]), 7),
    "args-cni-not-object": ({}, conf(args={"cni": "x"}), 7),  # issue 12 item 9: was accepted
    "args-cni-upper-not-object": ({}, conf(args={"CNI": 5}), 7),
    "bad-state-dir": ({}, conf(stateDir="relative"), 7),
    "unknown-cni-args": ({"CNI_ARGS": "FOO=bar"}, conf(), 4),
    "bad-cni-args-pair": ({"CNI_ARGS": "IgnoreUnknown=1;A=b=c"}, conf(), 4),
    "netns-not-a-netns": ({"CNI_NETNS": "/dev/null"}, conf(), 8),
    "netns-directory": ({"CNI_NETNS": "/"}, conf(), 8),
    "netns-missing": ({"CNI_NETNS": "/nonexistent/netns"}, conf(), 8),
    "netns-relative": ({"CNI_NETNS": "no-such-netns"}, conf(), 8),
}


@pytest.fixture
def target(tmp_path, netns):
    """A private state/run dir, and a real netns that a wrongly accepted ADD would change."""
    env = {"CNM_STATE_DIR": str(tmp_path / "state"), "CNM_RUN_DIR": str(tmp_path / "run"), "CNI_PATH": BIN,
           "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    path = netns("cnmbad") if os.geteuid() == 0 else "/nonexistent/netns"
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS=path, CNI_IFNAME="lo", CNI_ARGS="")
    return env, tmp_path


def full_env(base: dict, changes: dict) -> dict:
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def assert_nothing_changed(tmp_path, netns_path: str) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    assert not state.exists() or os.listdir(state) == [], os.listdir(state)
    assert not (run / "netns").exists() or os.listdir(run / "netns") == []
    if netns_path.startswith("/run/netns/"):
        out = subprocess.run(["ip", "-n", os.path.basename(netns_path), "-j", "link", "show", "lo"],
                             capture_output=True, check=True).stdout
        assert "UP" not in json.loads(out)[0]["flags"]  # a fresh netns's lo is down; nobody set it up


def assert_error(stdout: bytes, exit_code: int, code: int) -> None:
    assert exit_code != 0
    assert stdout.count(b"\n") == 1 and stdout.endswith(b"\n")
    err = json.loads(stdout)
    assert set(err) == {"cniVersion", "code", "msg", "details"}
    assert err["code"] == code, err
    assert b"Traceback" not in stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_in_process(case, target):
    base, tmp_path = target
    changes, stdin, code = CASES[case]
    env = full_env(base, changes)
    response = handle("cnm-none", env, stdin)
    assert_error(response.stdout, response.exit_code, code)
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "missing-command"))
def test_bad_input_through_the_executable(case, target):
    base, tmp_path = target
    changes, stdin, code = CASES[case]
    env = full_env(base, changes)
    proc = subprocess.run([os.path.join(BIN, "cnm-none")], input=stdin, env=env, capture_output=True, timeout=60)
    assert_error(proc.stdout, proc.returncode, code)
    assert b"Traceback" not in proc.stderr and proc.stderr == b"", proc.stderr[:2000]
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


@pytest.mark.parametrize("plugin", ["cnm-host", "loopback"])
@pytest.mark.parametrize("case", ["malformed-json", "bad-ifname-slash", "unsupported-version", "huge-stdin"])
def test_other_plugin_names_answer_the_same(plugin, case, target):
    base, tmp_path = target
    changes, stdin, code = CASES[case]
    response = handle(plugin, full_env(base, changes), stdin)
    assert_error(response.stdout, response.exit_code, code)
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


def test_stdin_closed_early_is_still_an_error_object(target):
    base, tmp_path = target
    proc = subprocess.run([os.path.join(BIN, "cnm-none")], stdin=subprocess.DEVNULL, env=base, capture_output=True)
    assert_error(proc.stdout, proc.returncode, 6)
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


@pytest.mark.parametrize("path", ["/proc/self/ns/pid", "/proc/self/ns/mnt", "/dev/null"])
def test_a_handed_over_fd_that_is_no_network_namespace_is_code_8(path, target):
    """What the resident helper gets from its thin client: an open CNI_NETNS (SCM_RIGHTS)."""
    base, tmp_path = target
    fd = os.open(path, os.O_RDONLY)
    try:
        response = handle("cnm-none", base, conf(), netns_fd=fd)
    finally:
        os.close(fd)
    assert_error(response.stdout, response.exit_code, 8)
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


@pytest.mark.parametrize("path", ["/proc/self/ns/pid", "/proc/self/ns/user"])
def test_a_namespace_that_is_no_network_namespace_is_code_8(path, target):
    base, tmp_path = target
    for plugin in ("cnm-none", "cnm-host"):
        response = handle(plugin, dict(base, CNI_NETNS=path), conf())
        assert_error(response.stdout, response.exit_code, 8)
    assert_nothing_changed(tmp_path, base["CNI_NETNS"])


# ==== cnm-bridge through its executable, in a real host netns =====================================

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def kernel_state(lab: Lab) -> tuple:
    tables = sh("nft", "list", "tables", ns=lab.host).stdout
    return sorted(lab.links()), tables, lab.leases(), lab.endpoints()


@pytest.mark.parametrize("key,value", [
    ("bridge", "a/b"), ("bridge", "x" * 16), ("bridge", ".."), ("bridge", "br 0"), ("bridge", "é" * 8),
    ("bridge", "br:0"), ("bridge", ""), ("name", "../x"), ("name", "a b"), ("name", "x;drop"),
    ("ipam", {"type": "../../bin/sh"}), ("ipam", {"type": "cnm-ipam", "dataDir": "relative/dir"}),
    ("ipam", {"type": "cnm-ipam", "dataDir": "/dev/null", "ranges": [[{"subnet": "10.250.0.0/24"}]]}),
    ("mtu", -1), ("vlan", 5000), ("stateDir", "relative"),
    ("runtimeConfig", {"mac": "zz:zz"}),
])
def test_invalid_config_is_refused_and_changes_nothing(lab, key, value):
    conf = lab.conf(version="1.1.0", ipMasq=True, macspoofchk=True)
    conf[key] = value
    c = lab.container()
    before = kernel_state(lab)
    r = lab.run("ADD", conf, c, cid="c1")
    assert r.rc != 0 and r.json["code"] != 199, r  # a CNI error, never an internal one
    assert b"Traceback" not in r.stdout + r.stderr, r
    assert kernel_state(lab) == before
    assert sorted(lab.links(c)) == ["lo"]


@pytest.mark.parametrize("cid,ifname", [("../c1", "eth0"), ("c1", "../x"), ("c1", "a/b"), ("c1", "x" * 16),
                                        ("-c1", "eth0"), ("c1", "."), ("c 1", "eth0"), ("c1", "e th0"), ("c1", "eth0:1")])
def test_invalid_ids_are_refused(lab, cid, ifname):
    conf = lab.conf(version="1.1.0", ipMasq=True)
    c = lab.container()
    before = kernel_state(lab)
    r = lab.run("ADD", conf, c, cid=cid, ifname=ifname)
    assert r.rc != 0 and r.json["code"] in (2, 4, 7), r
    assert kernel_state(lab) == before


def test_odd_but_valid_names_land_in_nft_as_data(lab):
    """A network name and container id full of the characters the id pattern allows, and a
    15-byte bridge name with unusual bytes: ADD works, our elements carry only owner tags
    (endpoint id @ store tag) and addresses, DEL removes them all."""
    lab.network = "n.e-t_" + lab.network[:20]
    lab.bridge = "b-r.i_d" + lab.bridge[-8:]
    conf = lab.conf(version="1.1.0", ipMasq=True, macspoofchk=True, isGateway=True)
    c = lab.container()
    cid = "C.o-n_t" + "9" * 50
    result = lab.add(conf, c, cid=cid)
    assert lab.link(lab.bridge) is not None
    elements = lab.nft_elements()
    assert elements and all(re.fullmatch(r"[0-9a-f]{24}@[0-9a-f]{12}", comment) for *_, comment in elements)
    ruleset = json.loads(sh("nft", "-j", "list", "ruleset", ns=lab.host).stdout)["nftables"]
    assert {t["table"]["name"] for t in ruleset if "table" in t} == {"cnm"}
    assert result["ips"]
    assert lab.run("DEL", conf, c, cid=cid).rc == 0
    lab.assert_nothing_left()
