"""Hostile input through the executables (a sample; test_hostile_input.py runs the
10,000 in process): real netns, so an ADD can succeed. Invalid names are refused with a
CNI error and nothing half-made; odd but valid names work and land in nftables only as
data (nft JSON), never as syntax."""

from __future__ import annotations

import json
import re

import pytest

from bridge_support import Lab, sh

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
