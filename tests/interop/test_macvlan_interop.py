"""cnm-macvlan against the reference Go macvlan plugin (/usr/lib/cni/macvlan), issue 15 item 1
and 5: the same config gives the same result, field by field, in every spec version both
speak (the MAC and the netns path differ by nature: compared by form); the two plugins'
containers side by side on one master reach each other and the LAN peer."""

from __future__ import annotations

import pytest

from conftest import ALL_VERSIONS
from macvlan_support import PEER, MacvlanLab, address_of

GO_VERSIONS = [v for v in ALL_VERSIONS if v != "1.1.0"]  # the installed Go plugin stops at 1.0.0


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return MacvlanLab(netns, cnm_env, tmp_path, ipam_type="host-local")


def shape(result: dict, netns: str) -> dict:
    """The result with the container's MAC and netns path replaced by their form."""
    out = dict(result)
    if "interfaces" in out:
        out["interfaces"] = [dict(i, mac=len(i.get("mac", "").split(":")), sandbox=i.get("sandbox") == netns)
                             for i in out["interfaces"]]
    return out


@pytest.mark.parametrize("version", GO_VERSIONS)
@pytest.mark.parametrize("mode", ["bridge", "private"])
def test_same_result_as_reference(lab, version, mode):
    dns = {"nameservers": ["10.251.0.53"], "search": ["lan"]}
    routes = [{"dst": "10.99.0.0/16"}]
    ours = lab.conf(version=version, mode=mode, dns=dns,
                    ipam=lab.ipam("10.251.0.0/24", routes=routes, rangeStart="10.251.0.10"))
    theirs = dict(ours, type="macvlan", ipam=dict(ours["ipam"], dataDir=lab.data_dir + "-go"))
    c1, c2 = lab.container(), lab.container()
    go = lab.run_go("ADD", theirs, c1, cid="go")
    assert go.rc == 0, go
    assert lab.run_go("DEL", theirs, c1, cid="go").rc == 0
    mine = lab.run("ADD", ours, c2, cid="go")  # a fresh lease dir each: the same address
    assert mine.rc == 0, mine
    assert shape(mine.json, c2) == shape(go.json, c1)
    link = lab.link("eth0", c2)
    assert link["linkinfo"]["info_data"]["mode"] == mode
    assert lab.run("DEL", ours, c2, cid="go").rc == 0
    lab.assert_nothing_left(c1, c2)


def test_side_by_side_on_one_master(lab):
    """A container of the Go plugin and one of ours on one master, one subnet (separate lease
    dirs kept apart by ranges): they reach each other and the peer; each DEL removes its own."""
    ours = lab.conf(ipam=lab.ipam("10.251.0.0/24", rangeStart="10.251.0.10", rangeEnd="10.251.0.99"))
    theirs = dict(lab.conf(ipam=lab.ipam("10.251.0.0/24", rangeStart="10.251.0.100", rangeEnd="10.251.0.199",
                                         dataDir=lab.data_dir + "-go")), type="macvlan")
    c1, c2 = lab.container(), lab.container()
    go = lab.run_go("ADD", theirs, c1, cid="go")
    assert go.rc == 0, go
    mine = lab.add(ours, c2, cid="cnm")
    assert lab.ping(c2, address_of(go.json)) and lab.ping(c1, address_of(mine))
    assert lab.ping(c1, PEER) and lab.ping(c2, PEER)
    assert lab.run("CHECK", dict(ours, prevResult=mine), c2, cid="cnm").rc == 0
    assert lab.run_go("CHECK", dict(theirs, prevResult=go.json), c1, cid="go").rc == 0
    assert lab.run("DEL", ours, c2, cid="cnm").rc == 0
    assert lab.macvlans(c1) == ["eth0"]
    assert lab.run_go("DEL", theirs, c1, cid="go").rc == 0
    lab.assert_nothing_left(c1, c2)
