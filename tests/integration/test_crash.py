"""Crash safety (issue 8): a plugin killed at any step of ADD or DEL (CNM_FAULT, os._exit:
no cleanup, as SIGKILL) leaves nothing behind once the runtime's next DEL -- or a GC --
has run, and the same container can then be ADDed again.

Each test runs the real bin/ executables inside its own throwaway "host" netns.
"""

from __future__ import annotations

import os

import pytest

from support.bridge import Lab
from support.common import exec_plugin, pin_names, pin_path
from cni_plugins.faults import EXIT_CODE, STEPS

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}  # a fault must kill the plugin process, never the helper


def run(lab: Lab, command: str, conf: dict, netns: str, cid: str = "c1", fault: str = ""):
    extra = dict(IN_PROCESS)
    if fault:
        extra["CNM_FAULT"] = fault
    return exec_plugin(conf["type"], command, conf, lab.env, container_id=cid, netns=netns, ifname="eth0",
                       host_netns=lab.host, extra_env=extra)


def pins(lab: Lab) -> list[str]:
    return pin_names(lab.env)


def converge(lab: Lab, conf: dict, netns: str, how: str) -> None:
    if how == "del":
        r = run(lab, "DEL", conf, netns)
    else:
        r = run(lab, "GC", dict(conf, **{"cni.dev/valid-attachments": []}), "")
    assert r.rc == 0, r


def assert_clean(lab: Lab) -> None:
    lab.assert_nothing_left()
    assert pins(lab) == []


def bridge_lab(netns, cnm_env, tmp_path) -> tuple[Lab, dict]:
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    conf = lab.conf(version="1.1.0", ipMasq=True, macspoofchk=True, isGateway=True)
    return lab, conf


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("step", range(1, len(STEPS["add"]) + 1))
def test_bridge_add_killed_at_step(netns, cnm_env, tmp_path, step, how):
    lab, conf = bridge_lab(netns, cnm_env, tmp_path)
    c = lab.container()
    r = run(lab, "ADD", conf, c, fault=f"add:{step}")
    assert r.rc == EXIT_CODE and r.stdout == b"", r
    converge(lab, conf, c, how)
    assert_clean(lab)
    r = run(lab, "ADD", conf, c)
    assert r.rc == 0, r
    assert lab.leases() and lab.veths()
    assert run(lab, "DEL", conf, c).rc == 0
    assert_clean(lab)


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("step", range(1, len(STEPS["del"]) + 1))
def test_bridge_del_killed_at_step(netns, cnm_env, tmp_path, step, how):
    lab, conf = bridge_lab(netns, cnm_env, tmp_path)
    c = lab.container()
    assert run(lab, "ADD", conf, c).rc == 0
    r = run(lab, "DEL", conf, c, fault=f"del:{step}")
    assert r.rc == EXIT_CODE, r
    converge(lab, conf, c, how)
    assert_clean(lab)
    r = run(lab, "ADD", conf, c)
    assert r.rc == 0, r
    assert run(lab, "DEL", conf, c).rc == 0
    assert_clean(lab)


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("fault", ["add:before-commit", "add:after-commit", "del:before-commit", "del:after-commit"])
def test_none_killed(netns, cnm_env, tmp_path, fault, how):
    """cnm-none owns a pin and records only: both converge too."""
    lab = Lab(netns, cnm_env, tmp_path)
    conf = {"cniVersion": "1.1.0", "name": lab.network, "type": "cnm-none"}
    c = lab.container()
    if fault.startswith("del"):
        assert run(lab, "ADD", conf, c).rc == 0
        assert run(lab, "DEL", conf, c, fault=fault).rc == EXIT_CODE
    else:
        assert run(lab, "ADD", conf, c, fault=fault).rc == EXIT_CODE
    converge(lab, conf, c, how)
    assert lab.endpoints() == [] and pins(lab) == []
    assert run(lab, "ADD", conf, c).rc == 0
    assert run(lab, "DEL", conf, c).rc == 0
    assert lab.endpoints() == [] and pins(lab) == []


def our_elements(lab: Lab) -> list:
    """Every element (sets and maps) of our tables in the lab's host netns."""
    import json

    from support.bridge import sh

    found = []
    for family in ("inet", "ip", "ip6", "bridge"):
        proc = sh("nft", "-j", "list", "table", family, "cnm", ns=lab.host, check=False)
        if proc.returncode != 0:
            continue
        for item in json.loads(proc.stdout)["nftables"]:
            body = item.get("set") or item.get("map")
            if body:
                found.extend((family, body["name"], e) for e in body.get("elem") or [])
    return found


@pytest.mark.parametrize("how", ["del", "gc"])
@pytest.mark.parametrize("step", range(1, len(STEPS["add"]) + 1))
def test_bridge_with_published_port_add_killed_at_step(netns, cnm_env, tmp_path, step, how):
    lab, conf = bridge_lab(netns, cnm_env, tmp_path)
    conf = dict(conf, capabilities={"portMappings": True},
                runtimeConfig={"portMappings": [{"hostPort": 18080 + step, "containerPort": 80, "protocol": "tcp"}]})
    c = lab.container()
    assert run(lab, "ADD", conf, c, fault=f"add:{step}").rc == EXIT_CODE
    converge(lab, conf, c, how)
    assert_clean(lab)
    assert our_elements(lab) == []
    assert run(lab, "ADD", conf, c).rc == 0
    assert our_elements(lab)
    assert run(lab, "DEL", conf, c).rc == 0
    assert_clean(lab)
    assert our_elements(lab) == []
