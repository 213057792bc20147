"""STATUS (CNI 1.1) for every plugin type, with each condition made real: 50 when an
ADD cannot succeed now, 51 when existing endpoints may have limited connectivity."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.bridge import Lab, sh
from support.common import exec_plugin
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


def path_without_nft(tmp_path) -> dict:
    bin_dir = tmp_path / "bin-without-nft"
    bin_dir.mkdir()
    (bin_dir / "nsenter").symlink_to(shutil.which("nsenter"))  # the test runs the plugin through it
    return {"PATH": str(bin_dir)}


@pytest.mark.parametrize("keys", [{"ipMasq": True}, {"macspoofchk": True}, {"isolateNetworks": True},
                                  {"icc": False}, {"capabilities": {"portMappings": True}}],
                         ids=["ipMasq", "macspoofchk", "isolateNetworks", "icc-false", "portMappings"])
def test_bridge_nft_missing(lab, tmp_path, keys):
    """Issue 13 item 3: STATUS asks the nftables backend, for every option that programs
    nftables (it checked the nft binary, for ipMasq and macspoofchk only). The nft binary
    backend (CNM_NFT=exec) without nft on PATH cannot serve the ADD: 50."""
    conf = lab.conf(version="1.1.0", **keys)
    r = status(lab, conf, dict(path_without_nft(tmp_path), CNM_NFT="exec"))
    assert code(r) == 50 and "nft" in r.json["msg"], r
    assert "PATH" in r.json["details"], r


def test_bridge_nft_binary_not_needed(lab, tmp_path):
    """Issue 13 item 3: with libnftables (the backend wherever the node has it) the nft binary
    is not needed: STATUS says ready, and the ADD it promises works."""
    conf = lab.conf(version="1.1.0", ipMasq=True, isolateNetworks=True, icc=False)
    no_nft = path_without_nft(tmp_path)
    assert status(lab, conf, no_nft).rc == 0
    # a network that programs no nftables needs no backend
    assert status(lab, lab.conf(version="1.1.0"), dict(no_nft, CNM_NFT="exec")).rc == 0
    c = lab.container()
    r = exec_plugin("cnm-bridge", "ADD", conf, lab.env, container_id="c1", netns=c, ifname="eth0", host_netns=lab.host,
                    extra_env=dict(IN_PROCESS, **no_nft))
    assert r.rc == 0, r
    assert lab.nft_elements(), "the ADD programmed nftables without the nft binary"
    assert lab.run("DEL", conf, c, cid="c1").rc == 0


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
    # each STATUS exec (no helper here) first asks the IPAM's VERSION: it lists 1.1.0
    assert open(log).read().split() == ["VERSION", "STATUS", "ADD", "VERSION", "STATUS"]
    assert lab.run("DEL", conf, c, cid="c1").rc == 0


def test_bridge_status_with_an_ipam_older_than_1_1(netns, cnm_env, tmp_path):
    """Issue 12 item 12: with Debian's host-local 1.1.1 (no STATUS; its VERSION stops at
    1.0.0) cnm-bridge's STATUS returned host-local's `3 missing containerID`: it took STATUS
    for an ADD. host-local is not sent STATUS now. It cannot serve an ADD of a 1.1.0 config
    either (`1 incompatible CNI versions`), and STATUS only comes with 1.1.0 configs, so
    STATUS says so: 50, naming the IPAM and the version, instead of a misleading code 3."""
    lab = Lab(netns, cnm_env, tmp_path)  # Go host-local
    conf = lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"}))
    r = status(lab, conf)
    assert code(r) == 50, r
    assert "host-local" in r.json["msg"] and "1.1.0" in r.json["msg"], r
    add = lab.run("ADD", conf, lab.container(), cid="c1")
    assert add.rc == 1 and add.json["code"] == 1, add  # what STATUS foretold
    lab.assert_nothing_left()


def test_bridge_gc_with_an_ipam_older_than_1_1_is_not_forwarded(netns, cnm_env, tmp_path):
    """Issue 12 item 12: GC of a 1.1.0 config forwarded to host-local 1.1.1 failed with its
    `7 missing network name`; an IPAM without GC is not asked (our own endpoints are still
    collected)."""
    lab = Lab(netns, cnm_env, tmp_path)
    conf = lab.conf(version="1.0.0", ipam=lab.ipam({"subnet": "10.250.0.0/29"}))
    c1, c2 = lab.container(), lab.container()
    lab.add(conf, c1, cid="c1")
    lab.add(conf, c2, cid="c2")
    valid = {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    r = exec_plugin("cnm-bridge", "GC", dict(conf, cniVersion="1.1.0", **valid), lab.env, host_netns=lab.host)
    assert r.rc == 0 and r.stdout == b"", r
    assert [e[1] for e in lab.endpoints()] == ["c1"] and lab.leases() == ["10.250.0.2"]
    assert lab.run("DEL", conf, c1, cid="c1").rc == 0
    lab.assert_nothing_left()


def test_helper_asks_each_ipam_binary_its_version_once(netns, cnm_env, tmp_path):
    """Issue 12 item 12: through the resident helper, STATUS costs one IPAM VERSION per binary
    (path, device, inode, mtime, size), not one per STATUS; a replaced binary is asked again,
    and one whose VERSION stops before 1.1.0 is never sent STATUS."""
    from test_helper import start_helper

    lab = Lab(netns, cnm_env, tmp_path)
    log = recording_ipam(lab, tmp_path)
    conf = lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"}))
    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        through_helper = {"CNM_HELPER_SOCKET": sock}
        for _ in range(3):
            r = exec_plugin("cnm-bridge", "STATUS", conf, lab.env, host_netns=lab.host, extra_env=through_helper)
            assert r.rc == 0, r
        assert open(log).read().split() == ["VERSION", "STATUS", "STATUS", "STATUS"]
        # the same path, another binary: one that speaks up to 1.0.0 only (Go host-local's VERSION)
        script = tmp_path / "extbin" / "rec-ipam"
        script.write_text(f'#!/bin/sh\necho "$CNI_COMMAND" >> {log}\nexec /usr/lib/cni/host-local\n')
        for _ in range(2):
            r = exec_plugin("cnm-bridge", "STATUS", conf, lab.env, host_netns=lab.host, extra_env=through_helper)
            assert code(r) == 50 and "rec-ipam" in r.json["msg"], r
        assert open(log).read().split() == ["VERSION", "STATUS", "STATUS", "STATUS", "VERSION"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_ipam_that_is_not_installed_is_not_available(netns, cnm_env, tmp_path):
    """An IPAM type found nowhere on CNI_PATH: no ADD can succeed, so STATUS says 50 (was 100)."""
    lab = Lab(netns, cnm_env, tmp_path)
    lab.ipam_type = "no-such-ipam"
    r = status(lab, lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"})))
    assert code(r) == 50 and "no-such-ipam" in r.json["msg"], r


def test_ipam_that_does_not_answer_version_is_not_available(netns, cnm_env, tmp_path):
    """An IPAM that cannot answer VERSION cannot serve an ADD either: STATUS says 50."""
    lab = Lab(netns, cnm_env, tmp_path)
    recording_ipam(lab, tmp_path)
    (tmp_path / "extbin" / "rec-ipam").write_text("#!/bin/sh\nexit 1\n")
    r = status(lab, lab.conf(version="1.1.0", ipam=lab.ipam({"subnet": "10.250.0.0/30"})))
    assert code(r) == 50 and "VERSION" in r.json["msg"], r


def test_bridge_our_table_deleted_is_limited_connectivity(lab):
    """51 while c1's entries are missing; the next ADD re-declares the table with them (issue
    21 item 5). In-process throughout: a helper serving this netns would put them back by
    itself (cli/nftwatch.py) before STATUS could see them missing."""
    lab.env.update(IN_PROCESS)
    conf = confs(lab)["cnm-bridge"]
    c, c2 = lab.container(), lab.container()
    lab.add(conf, c, cid="c1")
    assert status(lab, conf).rc == 0
    sh("nft", "delete", "table", "inet", "cnm", ns=lab.host)
    r = status(lab, conf)
    assert code(r) == 51 and "c1" in r.json["details"], r
    lab.add(conf, c2, cid="c2")
    assert status(lab, conf).rc == 0
    sh("nft", "flush", "chain", "inet", "cnm", "postrouting", ns=lab.host)
    r = status(lab, conf)
    assert code(r) == 51 and "postrouting" in r.json["details"], r
    for cid, ns in (("c1", c), ("c2", c2)):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    assert status(lab, conf).rc == 0
    lab.assert_nothing_left()


def test_helper_status_sees_every_nftables_change(lab, tmp_path):
    """Issue 12 item 12: the helper answers a repeated STATUS without reading our tables back
    while the kernel's nftables generation stays the same; any change (here one element
    deleted by hand, then the table) must still be seen by the next STATUS."""
    from test_helper import start_helper

    conf = confs(lab)["cnm-bridge"]
    c = lab.container()
    lab.add(conf, c, cid="c1")
    helper_dir = tmp_path / "helper"
    helper_dir.mkdir()
    proc, sock = start_helper(helper_dir)
    try:
        def helper_status():
            return exec_plugin("cnm-bridge", "STATUS", conf, lab.env, host_netns=lab.host,
                               extra_env={"CNM_HELPER_SOCKET": sock})

        for _ in range(3):
            assert helper_status().rc == 0
        address = lab.addrs("eth0", c)[0].split("/")[0]
        sh("nft", "delete", "element", "inet", "cnm", "masq4", f"{{ {address} }}", ns=lab.host)
        r = helper_status()
        assert code(r) == 51 and "c1" in r.json["details"], r
        sh("nft", "add", "element", "inet", "cnm", "masq4", f"{{ {address} }}", ns=lab.host)
        assert helper_status().rc == 0
        # (the table itself deleted, this helper's firewall watch would put back at once)
        sh("nft", "flush", "set", "inet", "cnm", "masq4", ns=lab.host)
        assert code(helper_status()) == 51
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert lab.run("DEL", conf, c, cid="c1").rc == 0
