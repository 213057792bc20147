"""STATUS (CNI 1.1) for every plugin type, with each condition made real: 50 when an
ADD cannot succeed now, 51 when existing endpoints may have limited connectivity."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bridge_support import Lab, sh
from conftest import exec_plugin
from test_gc import recording_ipam

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}  # the condition is the plugin process's own (PATH, mounts)


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def status(lab: Lab, conf: dict, extra_env: dict | None = None):
    env = dict(IN_PROCESS, **(extra_env or {}))
    return exec_plugin(conf["type"], "STATUS", dict(conf, cniVersion="1.1.0"), lab.env, host_netns=lab.host,
                       extra_env=env)


def code(run) -> int:
    return 0 if run.rc == 0 else run.json["code"]


def confs(lab: Lab) -> dict:
    base = {"cniVersion": "1.1.0", "name": lab.network}
    return {
        "cnm-bridge": lab.conf(version="1.1.0", ipMasq=True),
        "cnm-none": dict(base, type="cnm-none"),
        "cnm-host": dict(base, type="cnm-host"),
        "cnm-container": dict(base, type="cnm-container", container="other"),
    }


@pytest.mark.parametrize("plugin", ["cnm-bridge", "cnm-none", "cnm-host", "cnm-container"])
def test_ready(lab, plugin):
    r = status(lab, confs(lab)[plugin])
    assert r.rc == 0 and r.stdout == b"", r


@pytest.mark.parametrize("plugin", ["cnm-bridge", "cnm-none", "cnm-host", "cnm-container"])
def test_store_cannot_be_created(lab, tmp_path, plugin):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    conf = dict(confs(lab)[plugin], stateDir=str(blocker / "state"))
    r = status(lab, conf)
    assert code(r) == 50, r


def test_store_read_only(lab):
    conf = confs(lab)["cnm-none"]
    c = lab.container()
    lab.add(conf, c, cid="c1")
    state = lab.env["CNM_STATE_DIR"]
    subprocess.run(["mount", "--bind", state, state], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", state], check=True)
        r = status(lab, conf)
        assert code(r) == 50, r
        assert lab.run("ADD", conf, lab.container(), cid="c2").rc != 0  # STATUS told the truth
    finally:
        subprocess.run(["umount", "-l", state], capture_output=True)
    assert status(lab, conf).rc == 0
    assert lab.run("DEL", conf, c, cid="c1").rc == 0


def test_bridge_nft_missing(lab, tmp_path):
    conf = confs(lab)["cnm-bridge"]
    bin_dir = tmp_path / "bin-without-nft"
    bin_dir.mkdir()
    (bin_dir / "nsenter").symlink_to(shutil.which("nsenter"))  # the test runs the plugin through it
    no_nft = {"PATH": str(bin_dir)}
    r = status(lab, conf, no_nft)
    assert code(r) == 50 and "nft" in r.json["msg"], r
    # without ipMasq/macspoofchk nothing needs nft
    assert status(lab, dict(conf, ipMasq=False), no_nft).rc == 0


def test_bridge_range_exhausted(lab):
    conf = lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"}))  # one usable address
    assert status(lab, conf).rc == 0
    c = lab.container()
    lab.add(conf, c, cid="c1")
    r = status(lab, conf)
    assert code(r) == 50, r
    assert lab.run("DEL", conf, c, cid="c1").rc == 0
    assert status(lab, conf).rc == 0


def test_bridge_status_delegated_to_external_ipam(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path)
    log = recording_ipam(lab, tmp_path)
    conf = lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"}))
    assert status(lab, conf).rc == 0
    c = lab.container()
    lab.add(conf, c, cid="c1")
    assert code(status(lab, conf)) == 50
    assert open(log).read().split() == ["STATUS", "ADD", "STATUS"]
    assert lab.run("DEL", conf, c, cid="c1").rc == 0


def test_bridge_our_table_deleted_is_limited_connectivity(lab):
    conf = confs(lab)["cnm-bridge"]
    c = lab.container()
    lab.add(conf, c, cid="c1")
    assert status(lab, conf).rc == 0
    sh("nft", "delete", "table", "inet", "cnm", ns=lab.host)
    r = status(lab, conf)
    assert code(r) == 51 and "c1" in r.json["details"], r
    # the next ADD re-declares the table, but c1's entries stay missing until it is re-added
    assert lab.run("DEL", conf, c, cid="c1").rc == 0
    assert status(lab, conf).rc == 0
    lab.assert_nothing_left()
