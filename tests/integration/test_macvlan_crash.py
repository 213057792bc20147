"""cnm-macvlan crash safety (issue 15 item 2): a plugin killed at any step of ADD or DEL
(CNM_FAULT, os._exit: no cleanup, as SIGKILL), then the runtime's DEL, a CNI GC or
`cnmctl gc`, leaves no macvlan (in the node or the container) and no lease; the same
container can then be added again."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BIN, exec_plugin, pin_names
from cni_plugins.faults import EXIT_CODE, STEPS
from macvlan_support import PEER, MacvlanLab

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}  # a fault must kill the plugin process, never the helper


def run(lab, command, conf, netns, fault=""):
    extra = dict(IN_PROCESS, **({"CNM_FAULT": fault} if fault else {}))
    return exec_plugin(conf["type"], command, conf, lab.env, container_id="c1", netns=netns, ifname="eth0",
                       host_netns=lab.host, extra_env=extra)


def converge(lab, conf, netns, how):
    if how == "del":
        r = run(lab, "DEL", conf, netns)
        assert r.rc == 0, r
    elif how == "gc":
        r = run(lab, "GC", dict(conf, **{"cni.dev/valid-attachments": []}), "")
        assert r.rc == 0, r
    else:  # the node-wide sweep, as an operator runs it
        proc = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmctl"), "gc"],
                              env=dict(lab.env), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc
        # what only a DEL can reach (the container's netns) goes with the runtime's DEL
        assert run(lab, "DEL", conf, netns).rc == 0


def assert_clean(lab, c):
    lab.assert_nothing_left(c)
    assert pin_names(lab.env) == []


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return MacvlanLab(netns, cnm_env, tmp_path)


@pytest.mark.parametrize("how", ["del", "gc", "cnmctl"])
@pytest.mark.parametrize("step", range(1, len(STEPS["add"]) + 1))
def test_add_killed_at_step(lab, step, how):
    conf = lab.conf(version="1.1.0")
    c = lab.container()
    r = run(lab, "ADD", conf, c, fault=f"add:{step}")
    assert r.rc == EXIT_CODE and r.stdout == b"", r
    converge(lab, conf, c, how)
    assert_clean(lab, c)
    assert run(lab, "ADD", conf, c).rc == 0
    assert lab.macvlans(c) == ["eth0"] and lab.leases() and lab.ping(c, PEER)
    assert run(lab, "DEL", conf, c).rc == 0
    assert_clean(lab, c)


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("step", range(1, len(STEPS["del"]) + 1))
def test_del_killed_at_step(lab, step, how):
    conf = lab.conf(version="1.1.0")
    c = lab.container()
    assert run(lab, "ADD", conf, c).rc == 0
    r = run(lab, "DEL", conf, c, fault=f"del:{step}")
    assert r.rc == EXIT_CODE, r
    converge(lab, conf, c, how)
    assert_clean(lab, c)
    assert run(lab, "ADD", conf, c).rc == 0
    assert run(lab, "DEL", conf, c).rc == 0
    assert_clean(lab, c)
