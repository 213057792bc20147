"""A full bridge (issue 12 item 13): the kernel gives a Linux bridge at most 1023 ports. The
bridge is filled for real in the lab's throwaway host netns (veth pairs made in batches with
pyroute2, gone with the netns), then cnm-bridge adds the 1023rd port and must refuse the
1024th with an error that says why, leaving nothing behind; `cnmctl doctor` warns from 90%."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from support.bridge import Lab
from support.common import BIN, in_netns

MAX_PORTS = 1023
CNMCTL = os.path.join(BIN, "cnmctl")


def fill(host: str, bridge: str, count: int) -> None:
    """`count` more ports on `bridge`: the host ends of veth pairs whose peers stay in the
    same (throwaway) netns, down; one netlink request per pair."""
    from pyroute2 import IPRoute

    def make():
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=bridge)[0]
            for i in range(count):
                ipr.link("add", ifname=f"fill{i:05d}a", kind="veth", peer={"ifname": f"fill{i:05d}b"}, master=index)

    in_netns(host, make)


def ports(lab: Lab) -> int:
    out = subprocess.run(["nsenter", f"--net={lab.host}", "--", "ip", "-j", "link", "show", "master", lab.bridge],
                         capture_output=True, text=True, check=True).stdout
    return len(json.loads(out or "[]"))


def doctor_bridge_findings(lab: Lab, tmp_path) -> list[dict]:
    confdir = tmp_path / "net.d"
    confdir.mkdir(exist_ok=True)
    env = dict(lab.env, NETCONFPATH=str(confdir))
    proc = subprocess.run([shutil.which("nsenter"), f"--net={lab.host}", "--", CNMCTL, "doctor", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=300)
    return [f for f in json.loads(proc.stdout) if f["check"] == "bridge"]


@pytest.mark.parametrize("ipam_type", ["cnm-ipam", "host-local"])
def test_the_1024th_port_is_refused_naming_the_limit(netns, cnm_env, tmp_path, ipam_type):
    """Issue 12 item 13: the 1024th ADD failed with "failed to create veth pair ...", which
    did not say why; and doctor said nothing as the bridge filled up."""
    lab = Lab(netns, cnm_env, tmp_path, ipam_type=ipam_type)
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24"), isGateway=True)
    first = lab.container()
    lab.add(conf, first, cid="c1")
    assert [f["severity"] for f in doctor_bridge_findings(lab, tmp_path)] == ["ok"]

    fill(lab.host, lab.bridge, MAX_PORTS - 2)
    last = lab.container()
    lab.add(conf, last, cid="c2")  # the 1023rd port
    assert ports(lab) == MAX_PORTS
    warned = doctor_bridge_findings(lab, tmp_path)
    assert [f["severity"] for f in warned] == ["warning"], warned
    assert lab.bridge in warned[0]["message"] and "1023" in warned[0]["message"], warned

    veths_before = len(lab.veths())
    refused = lab.container()
    run = lab.run("ADD", conf, refused, cid="c3")
    assert run.rc == 1 and run.json["code"] == 100, run
    said = run.json["msg"] + " " + run.json["details"]
    assert lab.bridge in said and "1023" in said, run
    assert b"Traceback" not in run.stderr
    # nothing of c3: no lease, no record, no veth on either side
    assert sorted(lab.leases()) == ["10.250.0.2", "10.250.0.3"]
    assert sorted(e[1] for e in lab.endpoints()) == ["c1", "c2"]
    assert len(lab.veths()) == veths_before and lab.link("eth0", refused) is None
    # a DEL of the refused container converges, as a runtime sends it
    assert lab.run("DEL", conf, refused, cid="c3").rc == 0

    for ns, cid in ((first, "c1"), (last, "c2")):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    assert lab.leases() == [] and lab.endpoints() == []
