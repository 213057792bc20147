"""Never harm a live pod, second round: what the attack on issue 20's fixes found, reproduced.

Real executables in a throwaway host netns per test (bridge_support.Lab). Each test fails on
the code before these fixes (its docstring says how).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

from support.bridge import Lab
from support.common import BIN, unique

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}  # the test kills the plugin process, never a shared helper
HOST_LOCAL = "/usr/lib/cni/host-local"


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="host-local")


def alive(lab: Lab, ns: str) -> bool:
    return lab.link("eth0", ns=ns) is not None and bool(lab.addrs("eth0", ns))


def test_a_failed_ipam_add_never_frees_the_lease_another_store_holds(lab, tmp_path):
    """Two stores (stateDirs) attach the same network, container id and ifname, sharing
    host-local's dataDir: host-local refuses the second ADD (the attachment holds an address)
    and the plugin's DEL after the failed IPAM ADD freed the first pod's lease; the next pod got
    the same address while the first still used it."""
    first_conf = lab.conf(version="1.0.0", stateDir=str(tmp_path / "st1"))
    second_conf = dict(first_conf, stateDir=str(tmp_path / "st2"), bridge=unique("cnb"))
    first, second, third = lab.container(), lab.container(), lab.container()
    lab.add(first_conf, first, cid="same")
    leases = lab.leases()
    assert len(leases) == 1
    failed = lab.run("ADD", second_conf, second, cid="same")
    assert failed.rc != 0 and failed.json.get("code"), failed
    assert lab.leases() == leases and alive(lab, first)
    assert lab.run("DEL", second_conf, second, cid="same").rc == 0  # the runtime's DEL after the failure
    assert lab.leases() == leases and alive(lab, first)
    got = lab.add(first_conf, third, cid="third")
    assert got["ips"][0]["address"].split("/")[0] not in leases  # never the first pod's address
    for conf, ns, cid in ((first_conf, first, "same"), (first_conf, third, "third")):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()


def test_another_stores_veth_of_the_same_attachment_is_left_alone(lab, tmp_path):
    """Two stores attach the same network, container id and ifname with their own IPAM: the
    host veth name (of the endpoint id) is the same. The second ADD took the name as a stale
    leftover and deleted the first pod's veth (its eth0 went with it); the second store's DEL
    deleted it too."""
    first_conf = lab.conf(version="1.0.0", stateDir=str(tmp_path / "st1"),
                          ipam=dict(lab.ipam(), dataDir=str(tmp_path / "ipam1")))
    second_conf = lab.conf(version="1.0.0", stateDir=str(tmp_path / "st2"), bridge=unique("cnb"),
                           ipam=dict(lab.ipam("10.252.0.0/24"), dataDir=str(tmp_path / "ipam2")))
    first, second = lab.container(), lab.container()
    lab.add(first_conf, first, cid="same")
    veths = lab.veths()
    failed = lab.run("ADD", second_conf, second, cid="same")
    assert failed.rc != 0 and "taken" in failed.json.get("msg", ""), failed
    assert alive(lab, first) and lab.veths() == veths
    assert lab.link("eth0", ns=second) is None  # nothing half-created in the second pod
    held = [f for f in os.listdir(tmp_path / "ipam2" / second_conf["name"])
            if f != "lock" and not f.startswith("last_reserved_ip")]
    assert held == []  # its lease undone
    assert lab.run("DEL", second_conf, second, cid="same").rc == 0
    assert alive(lab, first) and lab.veths() == veths
    assert lab.run("DEL", first_conf, first, cid="same").rc == 0
    lab.assert_nothing_left()


def test_a_killed_add_leaves_no_lease_its_ipam_makes_afterwards(lab, tmp_path):
    """A plugin killed (SIGKILL: the runtime's timeout, the OOM killer) while its delegated IPAM
    ran left the IPAM running: it reserved an address after the plugin was gone, which no
    record owned (and no DEL would ever name)."""
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    started = tmp_path / "ipam.pid"
    slow = wrappers / "slow-ipam"
    slow.write_text(f'#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then echo $$ > {started}; sleep 3; fi\n'
                    f'exec {HOST_LOCAL} "$@"\n')
    slow.chmod(0o755)
    conf = lab.conf(version="1.0.0", ipam=dict(lab.ipam(), type="slow-ipam"))
    pod = lab.container()
    env = {**lab.env, **IN_PROCESS, "CNI_PATH": f"{wrappers}:{lab.env['CNI_PATH']}", "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": "killed", "CNI_NETNS": pod, "CNI_IFNAME": "eth0", "CNI_ARGS": ""}
    plugin = subprocess.Popen(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnm-bridge")],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    plugin.stdin.write(json.dumps(conf).encode())
    plugin.stdin.close()
    deadline = time.monotonic() + 60
    while not started.exists() or not started.read_text().strip():
        assert time.monotonic() < deadline and plugin.poll() is None, "the IPAM never started"
        time.sleep(0.05)
    ipam_pid = int(started.read_text())
    plugin.kill()
    plugin.wait()
    while os.path.exists(f"/proc/{ipam_pid}"):  # the IPAM ends: killed with us, or after its work
        assert time.monotonic() < deadline, "the IPAM never ended"
        time.sleep(0.05)
    assert lab.leases() == []
    env["CNI_COMMAND"] = "DEL"  # the runtime's DEL converges whatever was left
    done = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnm-bridge")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done
    lab.assert_nothing_left()


def test_a_new_netns_with_a_gone_sandboxs_inode_number_is_a_new_sandbox(lab):
    """A netns's inode number is reused once it is gone. A sandbox whose netns went while its
    pin was lost (a wiped /run) matched the next netns with its number: the new pod joined the
    old sandbox, and the old pod's DEL (or GC) then tore down the new pod's network. A sandbox
    records its netns's cookie, which is never reused."""
    conf = lab.conf(version="1.0.0")
    old, new = lab.container(), lab.container()
    lab.add(conf, old, cid="old")
    st = os.stat(new)
    with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
        # As if old's netns were gone and `new` had been given its inode number.
        db.execute("UPDATE sandboxes SET ns_dev=?, ns_ino=?, netns=? WHERE id IN "
                   "(SELECT sandbox FROM endpoints WHERE container_id='old')", (st.st_dev, st.st_ino, new))
    lab.add(conf, new, cid="new")
    with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
        rows = dict(db.execute("SELECT container_id, sandbox FROM endpoints").fetchall())
    assert list(rows) == ["new"]  # the stale sandbox was released, not joined
    assert lab.run("DEL", conf, "", cid="old").rc == 0  # its runtime's DEL, the netns gone
    assert alive(lab, new)
    assert lab.run("DEL", conf, new, cid="new").rc == 0
    assert lab.run("DEL", conf, old, cid="old").rc == 0
    lab.assert_nothing_left()
