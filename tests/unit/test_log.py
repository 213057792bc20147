"""The plugins' event log (cni/log.py): where and what it writes, and that it never changes
a command's answer. Plugins are exec'd as a runtime does; commands that need no netns
(STATUS, and bad input) keep this file fast."""

from __future__ import annotations

import json
import os
import re

import pytest

from cni_plugins.cni import log
from cni_plugins.cni.dispatch import dispatch
from support.common import exec_plugin

STATUS = {"cniVersion": "1.1.0", "name": "lognet", "type": "cnm-none"}


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def fields(line: str) -> dict[str, str]:
    """logfmt -> dict (JSON-quoted values decoded)."""
    out = {}
    for key, raw in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
        out[key] = json.loads(raw) if raw.startswith('"') else raw
    return out


@pytest.fixture
def logged(cnm_env, tmp_path):
    env = dict(cnm_env, CNM_LOG_FILE=str(tmp_path / "cnm.log"))
    return env, tmp_path / "cnm.log"


def test_settings_precedence():
    env = {"CNM_LOG_FILE": "/tmp/env.log", "CNM_LOG_LEVEL": "error"}
    assert log.settings({}, {}) == ("/var/log/cnm-cni.log", log.LEVELS["info"])
    assert log.settings(env, {}) == ("/tmp/env.log", log.LEVELS["error"])
    assert log.settings(env, {"logFile": "/tmp/net.log", "logLevel": "DEBUG"}) == ("/tmp/net.log", log.LEVELS["debug"])
    # Invalid values never fail a command: the next source applies.
    assert log.settings(env, {"logFile": "relative.log", "logLevel": 3}) == ("/tmp/env.log", log.LEVELS["error"])


def test_one_line_per_event_whatever_the_values():
    line = log.format_line("error", {"msg": 'two\nlines "quoted"', "empty": "", "skipped": None, "n": 3})
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    parsed = fields(line.decode())
    assert parsed["msg"] == 'two\nlines "quoted"' and parsed["empty"] == "" and parsed["n"] == "3"
    assert "skipped" not in parsed


def test_success_is_logged_with_command_network_and_duration(logged):
    env, path = logged
    run = exec_plugin("cnm-none", "STATUS", STATUS, env)
    assert run.rc == 0 and run.stdout == b"" and run.stderr == b""
    [line] = lines(path)
    f = fields(line)
    assert f["level"] == "info" and f["plugin"] == "cnm-none" and f["command"] == "STATUS"
    assert f["network"] == "lognet" and f["outcome"] == "ok" and float(f["duration_ms"]) >= 0
    assert int(f["pid"]) > 0


def test_failure_logs_the_full_error_and_stdout_holds_only_the_error_object(logged):
    env, path = logged
    run = exec_plugin("cnm-none", "ADD", b'{"cniVersion": "1.0.0", "name": ', env, container_id="c9",
                      netns="/nonexistent", ifname="eth7")
    assert run.rc != 0 and set(run.json) == {"cniVersion", "code", "msg", "details"}
    [line] = lines(path)
    f = fields(line)
    assert f["level"] == "error" and f["outcome"] == "error" and f["command"] == "ADD"
    assert f["container"] == "c9" and f["ifname"] == "eth7" and f["netns"] == "/nonexistent"
    assert int(f["code"]) == run.json["code"] and f["msg"] == run.json["msg"] and f["details"] == run.json["details"]


def test_version_is_not_logged(logged):
    env, path = logged
    assert exec_plugin("cnm-none", "VERSION", {"cniVersion": "1.0.0"}, env).rc == 0
    assert lines(path) == []


def test_network_keys_win_and_level_filters(logged, tmp_path):
    env, path = logged
    own = tmp_path / "net.log"
    assert exec_plugin("cnm-none", "STATUS", dict(STATUS, logFile=str(own)), env).rc == 0
    assert len(lines(own)) == 1 and lines(path) == []
    quiet = dict(STATUS, logLevel="error")
    assert exec_plugin("cnm-none", "STATUS", quiet, env).rc == 0
    assert lines(path) == []  # success below the level
    assert exec_plugin("cnm-none", "STATUS", dict(quiet, cniVersion="1.0.0"), env).rc != 0  # too old for STATUS
    assert [fields(l)["level"] for l in lines(path)] == ["error"]
    assert exec_plugin("cnm-none", "STATUS", STATUS, dict(env, CNM_LOG_LEVEL="off")).rc == 0
    assert len(lines(path)) == 1
    assert exec_plugin("cnm-none", "STATUS", STATUS, dict(env, CNM_LOG_LEVEL="debug")).rc == 0
    assert json.loads(fields(lines(path)[-1])["config"]) == STATUS


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "proc-file", "fifo-without-reader"])
def test_unwritable_log_never_breaks_a_command(cnm_env, tmp_path, where):
    # (root ignores mode bits, so "unwritable" is a missing directory, a directory, or a /proc file)
    target = {"missing-dir": str(tmp_path / "no" / "such" / "cnm.log"), "a-directory": str(tmp_path),
              "proc-file": "/proc/version", "fifo-without-reader": str(tmp_path / "fifo")}[where]
    if where == "fifo-without-reader":
        os.mkfifo(target)  # a blocking open would hang the command forever
    env = dict(cnm_env, CNM_LOG_FILE=target)
    ok = exec_plugin("cnm-none", "STATUS", STATUS, env)
    assert ok.rc == 0 and ok.stdout == b"" and ok.stderr == b""
    bad = exec_plugin("cnm-none", "ADD", b"{", env, container_id="c1", netns="/x", ifname="eth0")
    assert bad.rc != 0 and bad.json["code"] == 6 and bad.stderr == b""


class BuggyPlugin:
    """A plugin with a bug: the internal-error path of dispatch."""

    def status(self, request):
        raise ZeroDivisionError("a bug deep inside")


def test_internal_error_traceback_goes_to_the_log_only(tmp_path):
    path = tmp_path / "cnm.log"
    env = {"CNI_COMMAND": "STATUS", "CNM_LOG_FILE": str(path), "CNI_PATH": "/nonexistent"}
    response = dispatch(BuggyPlugin, env, json.dumps(STATUS).encode(), plugin_name="cnm-buggy")
    answer = json.loads(response.stdout)
    assert response.exit_code == 1 and answer["code"] == 199 and "Traceback" not in response.stdout.decode()
    [line] = lines(path)
    f = fields(line)
    assert f["plugin"] == "cnm-buggy" and f["code"] == "199"
    assert f["traceback"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: a bug deep inside" in f["traceback"]


def test_gc_without_valid_attachments_logs_why_nothing_was_removed(logged):
    env, path = logged
    conf = dict(STATUS, type="cnm-none")
    assert exec_plugin("cnm-none", "GC", conf, env).rc == 0
    notes = [fields(l) for l in lines(path) if "nothing is removed" in l]
    assert len(notes) == 1 and notes[0]["network"] == "lognet" and notes[0]["command"] == "GC"
