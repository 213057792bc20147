"""cnmctl's command line: usage errors, cnitool's environment and ID, --publish parsing.

What cnmctl does to real namespaces, and its cache interop with cnitool, is in tests/e2e.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from cni_plugins.cli import cnmctl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CNMCTL = os.path.join(ROOT, "bin", "cnmctl")


def run(*args, env=None):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})}
    return subprocess.run([CNMCTL, *args], capture_output=True, text=True, env=full, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("add",),
        ("add", "net"),
        ("check", "net"),
        ("run",),
        ("run", "name"),  # neither --network nor --join
        ("run", "bad name", "--network", "n"),
        ("run", "x", "--network", "n", "--publish", "80"),
        ("rm",),
        ("add", "net", "/run/netns/x", "extra"),
    ],
)
def test_usage_errors_exit_2_with_usage_on_stderr(args):
    proc = run(*args)
    assert proc.returncode == 2, proc
    assert "usage: cnmctl" in proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [("--help",), ("add", "--help"), ("gc", "-h"), ("run", "--help"), ("rm", "--help")])
def test_help_everywhere(args):
    proc = run(*args)
    assert proc.returncode == 0 and "usage: cnmctl" in proc.stdout


def test_bad_environment_is_a_usage_error(tmp_path):
    (tmp_path / "n.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "t"}]}))
    base = {"NETCONFPATH": str(tmp_path), "CNI_PATH": str(tmp_path)}
    proc = run("add", "n", "/run/netns/x", env={**base, "CNI_ARGS": "A=1;B"})
    assert proc.returncode == 2 and "invalid CNI_ARGS pair 'B'" in proc.stderr
    proc = run("add", "n", "/run/netns/x", env={**base, "CAP_ARGS": "[1]"})
    assert proc.returncode == 2 and "CAP_ARGS" in proc.stderr


def test_runtime_failures_exit_1_with_a_message(tmp_path):
    proc = run("add", "nothere", "/run/netns/x", env={"NETCONFPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "no net configurations found" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "n.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "t"}]}))
    proc = run("add", "n", "/run/netns/x", env={"NETCONFPATH": str(tmp_path), "CNI_PATH": str(tmp_path),
                                                "CNI_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 1 and 'failed to find plugin "t"' in proc.stderr


def test_container_id_is_derived_like_cnitool():
    path = "/run/netns/abc"
    expected = "cnitool-" + hashlib.sha512(path.encode()).hexdigest()[:20]
    assert cnmctl.cnitool_container_id(path) == expected
    assert len(expected) == len("cnitool-") + 20


def test_environment_defaults(monkeypatch):
    for var in ("CNI_IFNAME", "CNI_ARGS", "CAP_ARGS"):
        monkeypatch.delenv(var, raising=False)
    rt = cnmctl.env_runtime("/run/netns/abc")
    assert (rt.ifname, rt.args, rt.capability_args) == ("eth0", [], {})
    monkeypatch.setenv("CNI_IFNAME", "net1")
    monkeypatch.setenv("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web")
    monkeypatch.setenv("CAP_ARGS", '{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"tcp"}]}')
    rt = cnmctl.env_runtime("/run/netns/abc")
    assert rt.ifname == "net1"
    assert rt.args == [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web")]
    assert rt.capability_args["portMappings"][0]["hostPort"] == 1


@pytest.mark.parametrize(
    "spec, entry",
    [
        ("8080:80", {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
        ("53:5353/udp", {"hostPort": 53, "containerPort": 5353, "protocol": "udp"}),
        ("127.0.0.1:8080:80/TCP", {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}),
        ("[::1]:8080:80", {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "::1"}),
    ],
)
def test_publish_specs(spec, entry):
    assert cnmctl.parse_publish(spec) == entry


@pytest.mark.parametrize("spec", ["80", "a:b", "0:80", "80:70000", "80:80/icmp", "1:2:3:4"])
def test_bad_publish_specs(spec):
    with pytest.raises(cnmctl.UsageError):
        cnmctl.parse_publish(spec)
