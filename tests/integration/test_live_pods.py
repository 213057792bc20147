"""Never harm a live pod (issue 20): each finding of the hostile test, reproduced.

Real executables in a throwaway host netns per test (bridge_support.Lab); `cnmctl` runs there
too. Every test fails on the code before issue 20 (the finding it names says how).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from support.bridge import Lab, sh
from cni_plugins.faults import EXIT_CODE, STEPS
from support.common import BIN, exec_plugin, pin_names, pin_path, unique, wait_listening

IN_PROCESS = {"CNM_HELPER_SOCKET": "off"}  # a fault must kill the plugin process, never a shared helper


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")


def cnmctl(lab: Lab, *args: str, env: dict | None = None, prefix: tuple = ()) -> subprocess.CompletedProcess:
    full = dict(lab.env, **(env or {}))
    argv = ["nsenter", f"--net={lab.host}", "--", *prefix, os.path.join(BIN, "cnmctl"), *args]
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=120)


def gc_json(lab: Lab, env: dict | None = None, prefix: tuple = ()) -> dict:
    proc = cnmctl(lab, "gc", "--format", "json", env=env, prefix=prefix)
    assert proc.returncode == 0, proc
    return json.loads(proc.stdout)


def ports_conf(lab: Lab, port: int, **keys) -> dict:
    keys = {"isGateway": True, "ipMasq": True, **keys}
    return dict(lab.conf(version="1.1.0", **keys), capabilities={"portMappings": True},
                runtimeConfig={"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})


def map_elements(lab: Lab) -> list:
    """Every element of our tables' maps (published ports), with its comment."""
    found = []
    for family in ("inet", "bridge"):
        proc = sh("nft", "-j", "list", "table", family, "cnm", ns=lab.host, check=False)
        if proc.returncode:
            continue
        for item in json.loads(proc.stdout)["nftables"]:
            found += (item.get("map") or {}).get("elem") or []
    return found


def alive(lab: Lab, ns: str) -> bool:
    """The pod still has its network: eth0 with an address, its veth on the host."""
    return lab.link("eth0", ns=ns) is not None and bool(lab.addrs("eth0", ns))


# ---- finding 1 -----------------------------------------------------------------------------
def test_gc_of_one_state_dir_never_touches_another_stores_pods(lab, tmp_path):
    """Finding 1: with a per-network stateDir, a CNI GC of network A (and `cnmctl gc` of A's
    store) deleted network B's live veth, masquerade elements and pin."""
    net_a = lab.conf(version="1.1.0", ipMasq=True, stateDir=str(tmp_path / "stA"))
    net_b = dict(lab.conf(version="1.1.0", ipMasq=True, stateDir=str(tmp_path / "stB"), bridge=unique("cnb"),
                          ipam=lab.ipam("10.251.0.0/24")), name=unique("brnetB", 30))
    a, b = lab.container(), lab.container()
    lab.add(net_a, a, cid="a")
    lab.add(net_b, b, cid="b")
    b_veths = [v for v in lab.veths() if v != "cnm" + _ep(net_a, "a")[:12]]
    b_elements = [e for e in lab.nft_elements() if "10.251." in json.dumps(e[2])]
    b_env = dict(lab.env, CNM_STATE_DIR=str(tmp_path / "stB"))
    b_pins = pin_names(b_env)
    assert b_veths and b_elements and b_pins
    gc = lab.run("GC", dict(net_a, **{"cni.dev/valid-attachments": []}))
    assert gc.rc == 0, gc
    gc_json(lab, env={"CNM_STATE_DIR": str(tmp_path / "stA")})
    assert lab.link("eth0", ns=a) is None  # A's pod went (the runtime's word)
    assert alive(lab, b) and set(b_veths) <= set(lab.veths())
    assert [e for e in lab.nft_elements() if "10.251." in json.dumps(e[2])] == b_elements
    assert pin_names(b_env) == b_pins
    assert lab.run("DEL", net_b, b, cid="b").rc == 0
    assert lab.run("DEL", net_a, a, cid="a").rc == 0
    lab.assert_nothing_left()


def _ep(conf: dict, cid: str) -> str:
    from cni_plugins.cnm.model import endpoint_id

    return endpoint_id(conf["name"], cid, "eth0")


# ---- finding 2 -----------------------------------------------------------------------------
def test_cnmctl_gc_from_another_mount_namespace_judges_nothing(lab):
    """Finding 2: `cnmctl gc` where /run differs (a toolbox sharing the host netns and
    /var/lib) judged every sandbox "netns gone" and tore all of them down."""
    conf = lab.conf(version="1.1.0", ipMasq=True)
    pods = {f"p{i}": lab.container() for i in range(2)}
    for cid, ns in pods.items():
        lab.add(conf, ns, cid=cid)
    before = (sorted(lab.veths()), lab.leases(), lab.endpoints(), pin_names(lab.env))
    toolbox = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               f'mount -t tmpfs toolbox "{lab.env["CNM_RUN_DIR"]}" && mount -t tmpfs toolbox /run/netns && exec "$@"',
               "toolbox")
    report = gc_json(lab, prefix=toolbox)
    assert report["removed"] == [] and report["errors"] == [], report
    kept = [a for a in report["kept"] if a["kind"] == "unknown"]
    assert len(kept) == 2 and all("another mount namespace" in a["detail"] for a in kept), report
    assert (sorted(lab.veths()), lab.leases(), lab.endpoints(), pin_names(lab.env)) == before
    assert all(alive(lab, ns) for ns in pods.values())
    for cid, ns in pods.items():
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()


# ---- finding 3 -----------------------------------------------------------------------------
def test_host_local_leases_survive_migration_gc_and_doctor(netns, cnm_env, tmp_path):
    """Finding 3: after the live migration from host-local, doctor called the reference pods'
    leases stale and `cnmctl gc` freed them: a new pod asking for that address got it while
    the old pod still used it."""
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="host-local")
    go = lab.conf(version="1.0.0", plugin="bridge", isGateway=True)
    old = lab.container()
    assert lab.run_go("ADD", go, old, cid="old").rc == 0
    taken = lab.addrs("eth0", old)[0].split("/")[0]
    ours = lab.conf(version="1.0.0", isGateway=True, ipam=dict(lab.ipam(), type="cnm-ipam"))
    new = lab.container()
    lab.add(ours, new, cid="new")
    doctor = cnmctl(lab, "doctor", "-f", "json")
    findings = [f for f in json.loads(doctor.stdout) if f["check"] == "stale"]
    assert not [f for f in findings if f["severity"] != "ok"], findings
    assert any("foreign" in f["message"] and taken in f["message"] for f in findings), findings
    report = gc_json(lab)
    assert report["removed"] == [] and any(taken in a["name"] for a in report["kept"]), report
    assert os.path.exists(os.path.join(lab.data_dir, lab.network, taken))
    dup = lab.run("ADD", ours, lab.container(), cid="dup", args=f"IP={taken}")
    assert dup.rc != 0, dup
    assert lab.run("DEL", ours, new, cid="new").rc == 0
    assert lab.run_go("DEL", go, old, cid="old").rc == 0


# ---- finding 4 -----------------------------------------------------------------------------
def test_lease_of_a_crashed_only_add_is_collected(lab):
    """Finding 4: a crash hitting a network's only ADD (after its IPAM call): `cnmctl gc`
    removed the pin but not the lease, and doctor said nothing."""
    conf = lab.conf(version="1.1.0")
    ns = lab.container()
    crashed = exec_plugin(
        "cnm-bridge", "ADD", conf, lab.env, container_id="c1", netns=ns, ifname="eth0", host_netns=lab.host,
        extra_env=dict(IN_PROCESS, CNM_FAULT="add:ipam"))
    assert crashed.rc == EXIT_CODE, crashed
    assert lab.leases()
    doctor = json.loads(cnmctl(lab, "doctor", "-f", "json").stdout)
    stale = [f for f in doctor if f["check"] == "stale" and f["severity"] == "error"]
    assert len(stale) == 1 and "c1/eth0 (adding)" in stale[0]["message"], stale
    report = gc_json(lab)
    assert [a["kind"] for a in report["removed"]] == ["finish"], report
    lab.assert_nothing_left()
    assert pin_names(lab.env) == []


# ---- finding 5 -----------------------------------------------------------------------------
@pytest.fixture
def small_state_fs(tmp_path):
    """A 2 MiB tmpfs for the store, filled on demand to leave a given number of bytes."""
    state = tmp_path / "fullstate"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "cnmfull", str(state)], check=True)
    filler = state / "filler"

    def fill(budget: int | None) -> None:
        if filler.exists():
            filler.unlink()
        if budget is None:
            return
        free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - budget))
            f.flush()
        while True:  # tmpfs rounds to pages: top up until only `budget` is left
            left = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
            if left <= budget:
                break
            with open(filler, "ab") as f:
                f.write(b"\0" * (left - budget))

    yield str(state), fill
    subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.mark.parametrize("budget", [0, 4096, 8192, 16384, 32768, 65536, 131072])
def test_add_failing_at_its_commit_leaves_nothing(lab, small_state_fs, budget):
    """Finding 5: with the state filesystem full at commit time, the ADD failed but left eth0
    up with its IP, the lease, the pin and the DNAT of its hostPort (so the next pod's -p on
    that port failed with 102). Each byte budget stops the store at another write."""
    state, fill = small_state_fs
    conf = ports_conf(lab, 18200, stateDir=state)
    warm = lab.container()
    lab.add(conf, warm, cid="warm")  # the store exists, with a few pages in use
    assert lab.run("DEL", conf, warm, cid="warm").rc == 0
    ns = lab.container()
    fill(budget)
    r = lab.run("ADD", conf, ns, cid="c1")
    fill(None)
    if r.rc == 0:  # the budget was enough: a normal pod
        assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    else:
        assert r.json["code"] in (50, 11), r
        assert lab.link("eth0", ns=ns) is None
        assert lab.leases() == [] and lab.veths() == [] and map_elements(lab) == []
        assert [p for p in pin_names(dict(lab.env, CNM_STATE_DIR=state))] == []
    other = lab.container()  # the port is free for the next pod
    lab.add(conf, other, cid="c2")
    assert lab.run("DEL", conf, other, cid="c2").rc == 0
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0  # what the runtime sends after a failed ADD
    assert lab.leases() == [] and lab.veths() == [] and map_elements(lab) == []


# ---- finding 6 -----------------------------------------------------------------------------
def blocking_ipam(lab: Lab, tmp_path) -> tuple[str, str]:
    """An IPAM plugin (exec'd) that waits until the test writes to its FIFO, then is cnm-ipam."""
    directory = tmp_path / "slowbin"
    directory.mkdir()
    fifo = str(tmp_path / "release")
    os.mkfifo(fifo)
    name = unique("slow-ipam-", 30)
    script = directory / name
    script.write_text(f'#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then read line < {fifo}; fi\nexec {BIN}/cnm-ipam\n')
    script.chmod(0o755)
    lab.env["CNI_PATH"] = f"{directory}:{lab.env['CNI_PATH']}"
    return name, fifo


def test_a_slow_ipam_stalls_no_other_network(lab, tmp_path):
    """Finding 6: a delegated IPAM ran under the node-wide store lock: a slow one made an
    unrelated ADD on another network wait as long (a hung one would stall the node)."""
    slow_type, fifo = blocking_ipam(lab, tmp_path)
    slow = lab.conf(version="1.1.0", ipam=dict(lab.ipam(), type=slow_type))
    quick = dict(lab.conf(version="1.1.0", bridge=unique("cnb"), ipam=lab.ipam("10.251.0.0/24")),
                 name=unique("quick", 30))
    pending: dict = {}
    blocked = threading.Thread(target=lambda: pending.update(r=lab.run("ADD", slow, lab.container(), cid="s1")))
    blocked.start()
    try:
        q1, q2 = lab.container(), lab.container()
        lab.add(quick, q1, cid="q1")  # would wait for the slow IPAM before issue 20
        assert lab.run("DEL", quick, q1, cid="q1").rc == 0
        lab.add(quick, q2, cid="q2")
        assert blocked.is_alive() and "r" not in pending  # the slow ADD is still in its IPAM
    finally:
        _feed(fifo)
        blocked.join(timeout=120)
    assert pending["r"].rc == 0, pending["r"]
    assert lab.run("DEL", quick, q2, cid="q2").rc == 0


# ---- finding 8 -----------------------------------------------------------------------------
@pytest.mark.parametrize("step", STEPS["add"])
def test_retry_after_a_killed_add_succeeds(lab, step):
    """Finding 8: after a killed ADD (code 11 from a killed helper), 12 of 15 immediate
    retries failed with "duplicate allocation" until a DEL. The same ADD, retried at once,
    must succeed, whichever step the first one died at."""
    conf = ports_conf(lab, 18300)
    ns = lab.container()
    first = exec_plugin("cnm-bridge", "ADD", conf, lab.env, container_id="c1", netns=ns, ifname="eth0",
                        host_netns=lab.host, extra_env=dict(IN_PROCESS, CNM_FAULT=f"add:{step}"))
    assert first.rc == EXIT_CODE, first
    retry = lab.run("ADD", conf, ns, cid="c1")
    assert retry.rc == 0, retry
    assert alive(lab, ns) and len(lab.leases()) == 1 and len(lab.veths()) == 1
    assert lab.run("CHECK", dict(conf, prevResult=retry.json), ns, cid="c1").rc == 0
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    lab.assert_nothing_left()
    assert map_elements(lab) == [] and pin_names(lab.env) == []


def test_retry_after_the_helper_was_killed_mid_add(lab, tmp_path):
    """Finding 8 through the helper: cnmd killed while an ADD waits in its IPAM; the client
    answers 11 (try again later) and the retry succeeds."""
    slow_type, fifo = blocking_ipam(lab, tmp_path)
    conf = lab.conf(version="1.1.0", ipam=dict(lab.ipam(), type=slow_type))
    sock = str(tmp_path / "cnmd.sock")
    log = open(tmp_path / "cnmd.log", "wb")
    helper = subprocess.Popen(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnmd"), "--socket", sock],
                              stdout=log, stderr=log)
    ns = lab.container()
    try:
        wait_listening(sock, helper, log=str(tmp_path / "cnmd.log"))
        env = dict(lab.env, CNM_HELPER_SOCKET=sock)
        result: dict = {}
        client = threading.Thread(target=lambda: result.update(r=exec_plugin(
            "cnm-bridge", "ADD", conf, env, container_id="c1", netns=ns, ifname="eth0", host_netns=lab.host)))
        client.start()
        _wait_for_child(helper.pid, slow_type)
        helper.kill()
        helper.wait()
        client.join(timeout=120)
    finally:
        if helper.poll() is None:
            helper.kill()
        log.close()
    assert result["r"].rc != 0 and result["r"].json["code"] == 11, result["r"]
    _wait_for_exit(slow_type)  # the IPAM call dies with the helper that made it: no lease nobody owns
    assert lab.leases() == []
    feeder = threading.Thread(target=_feed, args=(fifo,))  # for the retry's own IPAM call
    feeder.start()
    retried = lab.run("ADD", conf, ns, cid="c1")
    feeder.join(timeout=120)
    assert retried.rc == 0, retried
    assert alive(lab, ns) and len(lab.leases()) == 1
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    lab.assert_nothing_left()


def _feed(fifo: str, timeout: float = 60) -> None:
    """Let the blocked IPAM call go on, once it reads (never blocks the test for good)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads yet
            time.sleep(0.05)
            continue
        os.write(fd, b"go\n")
        os.close(fd)
        return


def _wait_for_exit(name: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while subprocess.run(["pgrep", "-f", name], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{name} still runs"
        time.sleep(0.02)


def _wait_for_child(pid: int, name: str, timeout: float = 60) -> None:
    """Until a process named `name` runs below `pid` (the helper exec'd the IPAM)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", name], capture_output=True, text=True).stdout.split()
        if out:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} never started under {pid}")


# ---- finding 9 -----------------------------------------------------------------------------
def test_readd_of_a_kept_endpoint_never_returns_a_stale_result(lab):
    """Finding 9: a second ADD of a kept endpoint (container mode) with new port mappings and
    ipMasq returned the old result: the new port was not published, the old one stayed held,
    CHECK failed. Now: the same ADD takes it back; another configuration is refused clearly."""
    conf = ports_conf(lab, 18400)
    ns = lab.container()
    first = lab.add(conf, ns, cid="web")
    joiner = {"cniVersion": "1.1.0", "name": unique("shared", 20), "type": "cnm-container", "container": "web"}
    assert lab.run("ADD", joiner, ns, cid="proxy", plugin="cnm-container").rc == 0
    assert lab.run("DEL", conf, ns, cid="web").rc == 0  # kept for the proxy
    changed = ports_conf(lab, 18401, ipMasq=False)
    refused = lab.run("ADD", changed, ns, cid="web")
    assert refused.rc != 0 and refused.json["code"] == 102, refused
    assert "cannot change" in refused.json["details"], refused
    again = lab.run("ADD", conf, ns, cid="web")
    assert again.rc == 0 and again.json == first, again
    assert lab.run("CHECK", dict(conf, prevResult=again.json), ns, cid="web").rc == 0
    assert lab.run("DEL", joiner, ns, cid="proxy", plugin="cnm-container").rc == 0
    assert lab.run("DEL", conf, ns, cid="web").rc == 0
    lab.assert_nothing_left()


# ---- issue 26, finding 6 -------------------------------------------------------------------
def test_an_unreadable_boot_id_tears_nothing_down(lab):
    """Issue 26, finding 6: an unreadable or empty boot id was taken as a new boot: `cnmctl gc`
    (or any command) run where it cannot be read (a chroot without /proc, ProcSubset=pid)
    voided every sandbox's identity, and it or the next ordinary ADD deleted the live pods'
    eth0 and released their leases."""
    conf = lab.conf(version="1.1.0")
    pods = {f"p{i}": lab.container() for i in range(2)}
    for cid, ns in pods.items():
        lab.add(conf, ns, cid=cid)
    masked = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
              'mount --bind /dev/null /proc/sys/kernel/random/boot_id && exec "$@"', "masked")
    gc_json(lab, prefix=masked)
    env = {**lab.env, **IN_PROCESS, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "m1", "CNI_NETNS": lab.container(),
           "CNI_IFNAME": "eth0", "CNI_ARGS": ""}
    masked_add = subprocess.run(["nsenter", f"--net={lab.host}", "--", *masked, os.path.join(BIN, "cnm-bridge")],
                                input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
    assert masked_add.returncode == 0, masked_add  # the command works: it only skips the reboot logic
    # back where the boot id reads: an ordinary ADD, then the node-wide gc
    late = lab.container()
    lab.add(conf, late, cid="late")
    report = gc_json(lab)
    assert report["removed"] == [], report
    assert all(alive(lab, ns) for ns in pods.values())
    assert len(lab.leases()) == 4 and len(lab.endpoints()) == 4
    for cid, ns in {**pods, "late": late}.items():
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    assert lab.run("DEL", conf, "", cid="m1").rc == 0
    lab.assert_nothing_left()


# ---- issue 21, finding 11 ------------------------------------------------------------------
def test_a_container_id_longer_than_a_file_name_works(lab):
    """Issue 21, finding 11: a container id over 255 bytes (valid by the id pattern) failed with
    `199 File name too long` from the pin path. Its pin is named after its hash now."""
    conf = lab.conf(version="1.1.0")
    ns = lab.container()
    cid = "c" + "0123456789abcdef" * 20  # 321 bytes
    result = lab.add(conf, ns, cid=cid)
    assert result["ips"] and alive(lab, ns)
    [pin] = pin_names(lab.env)
    assert pin.startswith("sha256-") and pin_path(lab.env, cid).endswith(pin)
    assert lab.run("CHECK", dict(conf, prevResult=result), ns, cid=cid).rc == 0
    assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()
    assert pin_names(lab.env) == []


# ---- found by the attack pass on issue 21 ----------------------------------------------------
@pytest.mark.parametrize("bad", [{}, False, "", ["c1"], [{"containerID": "c1"}], [{"containerID": "c1", "ifname": 5}]])
def test_gc_with_an_unreadable_valid_list_removes_nothing(lab, bad):
    """Attack on issue 21, finding 2: a malformed cni.dev/valid-attachments made GC remove every
    endpoint of the network, and only then fail with code 7. It is read first now."""
    conf = lab.conf(version="1.1.0", ipMasq=True)
    ns = lab.container()
    lab.add(conf, ns, cid="c1")
    gc = lab.run("GC", dict(conf, **{"cni.dev/valid-attachments": bad}))
    assert gc.rc != 0 and gc.json["code"] == 7, gc
    assert alive(lab, ns) and len(lab.endpoints()) == 1 and lab.nft_elements()
    # Go's JSON decoding matches keys without regard to case: ifName is ifname.
    keep = lab.run("GC", dict(conf, **{"cni.dev/valid-attachments": [{"containerId": "c1", "ifName": "eth0"}]}))
    assert keep.rc == 0 and alive(lab, ns), keep
    assert lab.run("DEL", conf, ns, cid="c1").rc == 0
    lab.assert_nothing_left()


def test_a_container_named_host_is_not_the_host_sandbox(lab):
    """Attack on issue 21, finding 7: container id "host" became the sandbox id of the host's
    own sandbox: always judged alive (never collected once its netns was gone), and a later
    cnm-host ADD joined it."""
    conf = lab.conf(version="1.1.0")
    ns = lab.container()
    lab.add(conf, ns, cid="host")
    [box] = json.loads(cnmctl(lab, "sandbox", "inspect", "host", "--format", "json").stdout)
    assert box["Id"] != "host" and box["State"] == "ready"
    subprocess.run(["umount", box["Pin"]], check=True)
    os.unlink(box["Pin"])
    subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)
    report = gc_json(lab)
    assert [a["kind"] for a in report["removed"]] == ["release"], report
    lab.assert_nothing_left()


def test_a_pod_made_where_the_boot_id_is_unreadable_survives_the_next_reader(lab):
    """Attack on issue 26, finding 2: the first boot's store, then a boot where the first
    commands cannot read the boot id (ProcSubset=pid, a chroot): their pod was made, the store
    kept the old boot's stamp, and the next command that could read it took every sandbox
    for one of the earlier boot and tore the new pod down. A sandbox records its own boot."""
    import sqlite3
    import uuid

    conf = lab.conf(version="1.1.0")
    before = lab.container()
    lab.add(conf, before, cid="before")  # made "in the earlier boot" (stamped below)
    with sqlite3.connect(os.path.join(lab.env["CNM_STATE_DIR"], "cnm.db")) as db:
        db.execute("UPDATE meta SET value=? WHERE key='boot_id'", (str(uuid.uuid4()),))
        db.execute("UPDATE sandboxes SET data=json_remove(data, '$.boot')")  # as an older version wrote it
    masked = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
              'mount --bind /dev/null /proc/sys/kernel/random/boot_id && exec "$@"', "masked")
    pod = lab.container()
    env = {**lab.env, **IN_PROCESS, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "p", "CNI_NETNS": pod,
           "CNI_IFNAME": "eth0", "CNI_ARGS": ""}
    made = subprocess.run(["nsenter", f"--net={lab.host}", "--", *masked, os.path.join(BIN, "cnm-bridge")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
    assert made.returncode == 0, made
    later = lab.container()
    # The first command that reads the boot id, in its own process: a resident helper connected
    # before the stamp was forged above, and a real reboot never keeps one.
    env.update(CNI_CONTAINERID="later", CNI_NETNS=later)
    made = subprocess.run(["nsenter", f"--net={lab.host}", "--", os.path.join(BIN, "cnm-bridge")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
    assert made.returncode == 0, made
    assert alive(lab, pod) and alive(lab, later)
    assert sorted(e[1] for e in lab.endpoints()) == ["later", "p"]  # "before" was of the earlier boot
    for cid, ns in (("p", pod), ("later", later), ("before", before)):
        assert lab.run("DEL", conf, ns, cid=cid).rc == 0
    lab.assert_nothing_left()
