"""Property: whatever env and stdin a plugin gets, it answers with exactly one JSON
document (an error object, a version answer, or nothing for a successful DEL/GC/STATUS),
an exit code that agrees with it, never an internal error, and it creates nothing.

In-process through handle(). CNI_NETNS is never a real namespace here (so no ADD can
succeed and nothing in the kernel can change); state and run dirs are private.
The number of examples: CNM_FUZZ_EXAMPLES (default 300; CI runs the `slow` mark with 2000).
"""

from __future__ import annotations

import json
import os
import sqlite3
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugins.cli.plugin import handle
from cni_plugins.cni import versions
from cni_plugins.cni.request import COMMANDS

EXAMPLES = int(os.environ.get("CNM_FUZZ_EXAMPLES", "300"))
ALLOWED_CODES = {1, 2, 4, 5, 6, 7, 8, 11, 50, 51} | set(range(100, 199))  # 199 = internal error: a bug

# ---- env -------------------------------------------------------------------------------------


def mostly(good, bad):
    """Mostly values that pass validation, so the later stages get exercised too."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


ids = mostly(st.sampled_from(["c1", "abc-123", "x" * 64]),
             st.one_of(st.sampled_from(["", "-x", "a b", "a/b", "abc\n", "é"]), st.text(max_size=20)))
ifnames = mostly(st.sampled_from(["eth0", "lo", "x" * 15]),
                 st.one_of(st.sampled_from(["", ".", "..", "a/b", "a:b", "x" * 16, "é" * 8, "e th"]), st.text(max_size=20)))
# Never a real network namespace: missing paths, non-nsfs files, relative names.
netns_paths = st.one_of(
    st.sampled_from(["", "dummy", "/nonexistent/netns", "/dev/null", "/", "/etc/hostname", "/proc/self/ns/pid"]),
    st.text(string.ascii_letters + string.digits + "/._-", max_size=30).map(lambda s: "/nonexistent-cnm/" + s),
)
cni_args = mostly(st.sampled_from(["", "IgnoreUnknown=1;K8S_POD_NAME=p;FOO=x", "IP=10.0.0.5", "IgnoreUnknown=true;X=1"]),
                  st.one_of(st.sampled_from(["FOO=bar", "A=b=c", ";;", "ip=1"]), st.text(max_size=40)))
commands = mostly(st.sampled_from(COMMANDS), st.one_of(st.sampled_from(["", "add", "Del", "FOO"]), st.text(max_size=8)))
env_values = {
    "CNI_CONTAINERID": ids,
    "CNI_NETNS": netns_paths,
    "CNI_IFNAME": ifnames,
    "CNI_ARGS": cni_args,
    "CNI_PATH": st.one_of(st.just("/nonexistent-cnm/bin"), st.text(max_size=20)),
}


@st.composite
def envs(draw):
    env = {"CNI_COMMAND": draw(commands)}
    for key, values in env_values.items():
        if draw(st.integers(0, 15)) or key == "CNI_NETNS":
            env[key] = draw(values)
    return env


# ---- stdin -----------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = mostly(st.dictionaries(st.text(max_size=8), json_values, max_size=4), json_values)
version_values = mostly(st.sampled_from(versions.SUPPORTED), st.one_of(st.sampled_from(["", "1.0.1", "9.9.9"]), json_values))
ip_texts = st.sampled_from(["10.1.0.5/16", "fd00::5/64", "10.1.0.1", "bogus", "", "300.1.1.1/8"])
prev_results = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "cniVersion": version_values,
            "interfaces": st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)},
                                                         optional={"mac": st.text(max_size=6), "sandbox": st.text(max_size=6)}), max_size=2),
            "ips": st.lists(st.fixed_dictionaries({"address": ip_texts},
                                                  optional={"gateway": ip_texts, "interface": st.integers(-1, 3), "version": st.sampled_from(["4", "6", 4])}), max_size=3),
            "routes": st.lists(st.fixed_dictionaries({"dst": ip_texts}, optional={"gw": ip_texts}), max_size=2),
            "dns": st.one_of(json_values, st.fixed_dictionaries({}, optional={"nameservers": st.lists(st.text(max_size=6), max_size=2)})),
            "ip4": st.one_of(json_values, st.fixed_dictionaries({"ip": ip_texts}, optional={"gateway": ip_texts})),
        },
    ),
)


@st.composite
def configs(draw, state_dir: str):
    conf = {}
    if draw(st.integers(0, 9)):
        conf["cniVersion"] = draw(version_values)
    if draw(st.integers(0, 19)):
        conf["name"] = draw(mostly(st.sampled_from(["net1", "cni-loopback"]), st.one_of(st.sampled_from(["", "a b", "../x"]), json_values)))
    if draw(st.integers(0, 19)):
        conf["type"] = draw(mostly(st.sampled_from(["cnm-none", "cnm-host", "loopback"]), json_values))
    optional = {
        "prevResult": prev_results,
        "runtimeConfig": json_objects,
        "capabilities": json_objects,
        "args": json_objects,
        "ipam": json_objects,
        "dns": json_objects,
        "cni.dev/valid-attachments": st.one_of(
            json_values, st.lists(st.fixed_dictionaries({"containerID": ids, "ifname": ifnames}), max_size=2)),
        # Never an arbitrary absolute path: only invalid values or our private directory.
        "stateDir": st.sampled_from(["relative", "", 5, None, ["x"], state_dir]),
        "unknownKey": json_values,
    }
    for key, values in optional.items():
        if draw(st.integers(0, 3)) == 0:
            conf[key] = draw(values)
    return json.dumps(conf).encode()


def stdins(state_dir: str):
    return mostly(configs(state_dir), st.one_of(
        st.binary(max_size=200),
        json_values.map(lambda v: json.dumps(v).encode()),
        configs(state_dir).map(lambda b: b[: len(b) // 2]),
        st.sampled_from([b"", b"[" * 5000, b"{" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000]),
    ))


# ---- the property ----------------------------------------------------------------------------


def check_answer(command: str, stdout: bytes, exit_code: int) -> None:
    if exit_code == 0:
        if command == "VERSION":
            doc = json.loads(stdout)
            assert stdout.count(b"\n") == 1
            assert doc["cniVersion"] in versions.SUPPORTED
            assert doc["supportedVersions"] == list(versions.SUPPORTED)
            return
        # No real netns: ADD and CHECK cannot succeed; DEL, GC, STATUS print nothing.
        assert command in ("DEL", "GC", "STATUS"), (command, stdout)
        assert stdout == b""
        return
    assert command != "VERSION", stdout  # VERSION never fails
    assert stdout.endswith(b"\n") and stdout.count(b"\n") == 1, stdout
    err = json.loads(stdout)
    assert isinstance(err, dict) and set(err) == {"cniVersion", "code", "msg", "details"}, err
    assert err["cniVersion"] in versions.SUPPORTED
    assert err["code"] in ALLOWED_CODES, err
    assert isinstance(err["msg"], str) and isinstance(err["details"], str)
    assert "Traceback" not in err["details"]


def check_nothing_created(state_dir: str, run_dir: str) -> None:
    pins = os.path.join(run_dir, "netns")
    assert not os.path.isdir(pins) or os.listdir(pins) == []
    db = os.path.join(state_dir, "cnm.db")
    if os.path.exists(db):
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT count(*) FROM endpoints").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM sandboxes").fetchone()[0] == 0
        finally:
            conn.close()


def run_property(tmp_path_factory, examples: int) -> None:
    base = tmp_path_factory.mktemp("fuzz")
    state_dir, run_dir = str(base / "state"), str(base / "run")

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(plugin=st.sampled_from(["cnm-none", "cnm-host", "loopback", "cnm-nosuch"]), env=envs(),
           stdin=stdins(state_dir))
    def prop(plugin, env, stdin):
        env = dict(env, CNM_STATE_DIR=state_dir, CNM_RUN_DIR=run_dir)
        response = handle(plugin, env, stdin)
        check_answer(env["CNI_COMMAND"], response.stdout, response.exit_code)
        check_nothing_created(state_dir, run_dir)

    prop()


def test_any_input_gives_one_valid_answer(tmp_path_factory):
    run_property(tmp_path_factory, min(EXAMPLES, 300))


@pytest.mark.slow
def test_any_input_gives_one_valid_answer_many_examples(tmp_path_factory):
    run_property(tmp_path_factory, max(EXAMPLES, 2000))
