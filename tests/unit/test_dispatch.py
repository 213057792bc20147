"""Command dispatch: VERSION, the about line, command/version floors and error objects
(cni-spec.md R5, R41-R45, R52, R57, R62-R66). In-process through handle() and through bin/."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_plugins.cli.plugin import handle
from cni_plugins.cni import versions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")
ALL = versions.SUPPORTED
PLUGINS = ("cnm-none", "cnm-host")


def conf(version="1.1.0", **extra):
    return json.dumps({"cniVersion": version, "name": "net1", "type": "cnm-none", **extra}).encode()


@pytest.fixture
def env(tmp_path):
    return {"CNM_STATE_DIR": str(tmp_path / "state"), "CNM_RUN_DIR": str(tmp_path / "run"), "CNI_PATH": BIN}


def answer(response) -> dict:
    assert response.stdout.endswith(b"\n") and response.stdout.count(b"\n") == 1
    return json.loads(response.stdout)


def assert_error(response, code: int, version: str) -> dict:
    assert response.exit_code != 0
    err = answer(response)
    assert set(err) == {"cniVersion", "code", "msg", "details"}
    assert err["code"] == code and err["cniVersion"] == version
    assert isinstance(err["msg"], str) and err["msg"] and isinstance(err["details"], str)
    assert "Traceback" not in err["details"]
    return err


# ---- VERSION (R42-R44) ----------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("version", ALL)
def test_version_echoes_every_supported_version(plugin, version, env):
    r = handle(plugin, dict(env, CNI_COMMAND="VERSION"), json.dumps({"cniVersion": version}).encode())
    assert r.exit_code == 0
    assert answer(r) == {"cniVersion": version, "supportedVersions": list(ALL)}


@pytest.mark.parametrize(
    "stdin", [b"", b"\n", b"{}", b"{\"cniVersion\":\"\"}", b"{\"cniVersion\":\"9.9.9\"}", b"{", b"[1]", b"\xff"]
)
def test_version_never_fails_on_stdin(stdin, env):
    r = handle("cnm-none", dict(env, CNI_COMMAND="VERSION"), stdin)
    assert r.exit_code == 0
    assert answer(r) == {"cniVersion": "1.1.0", "supportedVersions": list(ALL)}


def test_version_with_libcni_dummy_env(env):
    # What libcni's GetVersionInfo sends (R43).
    dummy = dict(env, CNI_COMMAND="VERSION", CNI_CONTAINERID="dummy", CNI_NETNS="dummy", CNI_IFNAME="dummy",
                 CNI_PATH="dummy", CNI_ARGS="")
    r = handle("cnm-host", dummy, b'{"cniVersion":"1.1.0"}')
    assert r.exit_code == 0 and answer(r)["supportedVersions"] == list(ALL)


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("version", ALL)
def test_version_through_the_executable_with_empty_env(plugin, version):
    proc = subprocess.run([os.path.join(BIN, plugin)], input=json.dumps({"cniVersion": version}).encode(),
                          env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout) == {"cniVersion": version, "supportedVersions": list(ALL)}
    assert proc.stderr == b""


def test_version_through_the_executable_with_empty_stdin_and_empty_vars():
    env = {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": "", "CNI_PATH": ""}
    proc = subprocess.run([os.path.join(BIN, "cnm-none")], stdin=subprocess.DEVNULL, env=env, capture_output=True)
    assert proc.returncode == 0 and json.loads(proc.stdout)["supportedVersions"] == list(ALL)


# ---- about line (R5) ------------------------------------------------------------------------


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("command_env", [{}, {"CNI_COMMAND": ""}])
def test_about_line_without_command(plugin, command_env):
    proc = subprocess.run([os.path.join(BIN, plugin)], input=conf(), env=command_env, capture_output=True)
    assert proc.returncode == 0
    assert proc.stdout == b""
    text = proc.stderr.decode()
    assert text.startswith(plugin)
    assert f"CNI protocol versions supported: {', '.join(ALL)}" in text


# ---- command floors (R41, R45, R52) ---------------------------------------------------------


@pytest.mark.parametrize("version", [v for v in ALL if versions.key(v) < (0, 4, 0)])
def test_check_needs_040(version, env):
    r = handle("cnm-none", dict(env, CNI_COMMAND="CHECK", CNI_CONTAINERID="c1", CNI_NETNS="/nonexistent",
                                CNI_IFNAME="lo"), conf(version))
    err = assert_error(r, 1, version)
    assert "CHECK" in err["msg"]


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", [v for v in ALL if v != "1.1.0"])
def test_gc_and_status_need_110(command, version, env):
    r = handle("cnm-none", dict(env, CNI_COMMAND=command), conf(version))
    err = assert_error(r, 1, version)
    assert command in err["msg"]
    assert not os.path.exists(env["CNM_STATE_DIR"])  # refused before anything was touched


def test_check_without_version_is_010_and_refused(env):
    stdin = json.dumps({"name": "net1", "type": "cnm-none"}).encode()
    r = handle("cnm-none", dict(env, CNI_COMMAND="CHECK", CNI_CONTAINERID="c1", CNI_NETNS="/x", CNI_IFNAME="lo"), stdin)
    assert_error(r, 1, "0.1.0")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_status_and_gc_succeed_silently(plugin, env):
    assert handle(plugin, dict(env, CNI_COMMAND="STATUS"), conf()).stdout == b""
    gc = conf(**{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "lo"}]})
    r = handle(plugin, dict(env, CNI_COMMAND="GC"), gc)
    assert (r.exit_code, r.stdout) == (0, b"")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_del_of_something_never_added_succeeds_silently(plugin, env):
    r = handle(plugin, dict(env, CNI_COMMAND="DEL", CNI_CONTAINERID="c1", CNI_NETNS="", CNI_IFNAME="eth0"), conf())
    assert (r.exit_code, r.stdout) == (0, b"")


# ---- error objects (R62, R63) ---------------------------------------------------------------


def attach_env(env, **kw):
    base = dict(env, CNI_COMMAND="ADD", CNI_CONTAINERID="c1", CNI_NETNS="/nonexistent/ns", CNI_IFNAME="eth0")
    base.update(kw)
    return base


@pytest.mark.parametrize("version", ALL)
def test_errors_carry_the_config_version_when_readable(version, env):
    # Failures at every stage: env, config validation, CNI_ARGS, the plugin itself.
    assert_error(handle("cnm-none", attach_env(env, CNI_IFNAME="a/b"), conf(version)), 4, version)
    assert_error(handle("cnm-none", attach_env(env), conf(version, name="bad name")), 7, version)
    assert_error(handle("cnm-none", attach_env(env, CNI_ARGS="FOO=1"), conf(version)), 4, version)
    assert_error(handle("cnm-none", attach_env(env), conf(version)), 8, version)
    assert_error(handle("cnm-none", dict(attach_env(env), CNI_COMMAND="BOGUS"), conf(version)), 4, version)
    assert_error(handle("cnm-none", dict(attach_env(env), CNI_NETNS=""), conf(version)), 4, version)


def test_error_version_when_config_cannot_be_read(env):
    assert_error(handle("cnm-none", attach_env(env), b"{"), 6, versions.LATEST)
    assert_error(handle("cnm-none", attach_env(env), conf("9.9.9")), 1, versions.LATEST)
    assert_error(handle("cnm-none", attach_env(env), json.dumps({"name": "n", "type": "t"}).encode()), 8, "0.1.0")


def test_missing_env_error_names_the_variables(env):
    err = assert_error(handle("cnm-none", dict(env, CNI_COMMAND="ADD", CNI_IFNAME="eth0"), conf()), 4, "1.1.0")
    assert "CNI_CONTAINERID" in err["msg"] and "CNI_NETNS" in err["msg"] and "CNI_IFNAME" not in err["msg"]


def test_unknown_plugin_name_is_an_error_object(env):
    err = assert_error(handle("cnm-nosuch", attach_env(env), conf()), 7, "1.1.0")
    assert "cnm-nosuch" in err["msg"]


def test_invalid_state_dir_names_the_key(env):
    err = assert_error(handle("cnm-none", attach_env(env), conf(stateDir="relative/dir")), 7, "1.1.0")
    assert "stateDir" in err["msg"]
