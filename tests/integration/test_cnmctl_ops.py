"""cnmctl's operator views and doctor over real state: plugins run in a throwaway host netns
(bridge_support.Lab), then `cnmctl network|sandbox|endpoint|doctor` runs in that same netns
and its tables/JSON are compared with the kernel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from support.bridge import Lab, sh
from cni_plugins.cnm.model import endpoint_id
from support.common import BIN, exec_plugin, store_id, unique

CNMCTL = os.path.join(BIN, "cnmctl")
NSENTER = shutil.which("nsenter")  # resolved here: a test may hand cnmctl a PATH without it
PORTS = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path)
    lab.confdir = tmp_path / "net.d"
    lab.confdir.mkdir()
    lab.log = tmp_path / "cnm.log"
    return lab


def cnmctl(lab, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = dict(lab.env, NETCONFPATH=str(lab.confdir), CNM_LOG_FILE=str(lab.log))
    full.update(env)
    return subprocess.run([NSENTER, f"--net={lab.host}", "--", CNMCTL, *args], env=full, capture_output=True,
                          text=True, timeout=120)


def write_conflist(lab, name: str, doc) -> str:
    path = lab.confdir / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def bridge_list(lab) -> dict:
    conf = lab.conf(version="1.0.0", isGateway=True)
    plugin = {k: v for k, v in conf.items() if k not in ("cniVersion", "name")}
    plugin["capabilities"] = {"portMappings": True}
    return {"cniVersion": "1.0.0", "name": lab.network, "plugins": [plugin]}


def kernel_view(lab, ns: str) -> tuple[str, list[str]]:
    link = json.loads(sh("ip", "-j", "link", "show", "eth0", ns=ns).stdout)[0]
    return link["address"], lab.addrs("eth0", ns)


@pytest.fixture
def two_pods(lab):
    """c1 (with a published port) and c2 on one bridge network, added by cnm-bridge."""
    ns1, ns2 = lab.container(), lab.container()
    conf1 = dict(lab.conf(isGateway=True), runtimeConfig={"portMappings": PORTS})
    lab.add(conf1, ns1, cid="c1")
    lab.add(lab.conf(isGateway=True), ns2, cid="c2")
    yield lab, {"c1": ns1, "c2": ns2}
    for cid, conf in (("c1", conf1), ("c2", lab.conf(isGateway=True))):
        lab.run("DEL", conf, {"c1": ns1, "c2": ns2}[cid], cid=cid)


def test_network_ls_and_inspect_match_the_kernel(two_pods):
    lab, pods = two_pods
    write_conflist(lab, "10-lab.conflist", bridge_list(lab))
    table = cnmctl(lab, "network", "ls")
    assert table.returncode == 0, table
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "DRIVER", "OPTIONS", "SUBNETS", "ENDPOINTS", "CONFIG"]
    row = next(r.split() for r in rows if r.startswith(lab.network + " "))
    assert row[1:5] == ["bridge", f"bridge={lab.bridge}", "10.250.0.0/24", "2"]
    assert header.index("DRIVER") == table.stdout.splitlines()[1].index(rows[0].split()[1])  # aligned columns

    as_json = json.loads(cnmctl(lab, "network", "ls", "--format", "json").stdout)
    assert lab.network in [n["Name"] for n in as_json]

    proc = cnmctl(lab, "network", "inspect", lab.network)
    assert proc.returncode == 0, proc
    [net] = json.loads(proc.stdout)
    assert net["Driver"] == "bridge" and net["Options"] == {"bridge": lab.bridge}
    assert net["IPAM"]["Config"] == [{"Subnet": "10.250.0.0/24", "Gateway": "10.250.0.1"}]
    assert net["ConfigFile"].endswith("10-lab.conflist") and net["Plugins"] == ["cnm-bridge"]
    by_cid = {e["ContainerID"]: e for e in net["Endpoints"]}
    assert set(by_cid) == {"c1", "c2"}
    for cid, ns in pods.items():
        mac, addrs = kernel_view(lab, ns)
        ep = by_cid[cid]
        assert ep["IfName"] == "eth0" and ep["MacAddress"] == mac and ep["IPs"] == addrs
        assert ep["Gateways"] == ["10.250.0.1"] and ep["Active"] is True
        assert ep["HostVeth"] in lab.links()  # the host end is on the host
    assert by_cid["c1"]["Ports"] == PORTS and by_cid["c2"]["Ports"] == []


def test_inspect_exit_codes(lab):
    missing = cnmctl(lab, "network", "inspect", "no-such-net")
    assert missing.returncode == 1 and "no-such-net" in missing.stderr and json.loads(missing.stdout) == []
    assert cnmctl(lab, "sandbox", "inspect", "no-such-box").returncode == 1
    assert cnmctl(lab, "network", "inspect").returncode == 2  # NAME is required
    assert cnmctl(lab, "network").returncode == 2
    assert cnmctl(lab, "endpoint", "ls", "--format", "yaml").returncode == 2
    for command in (["network", "ls"], ["network", "inspect"], ["sandbox", "ls"], ["sandbox", "inspect"],
                    ["endpoint", "ls"], ["doctor"], ["network"], ["sandbox"], ["endpoint"]):
        helped = cnmctl(lab, *command, "--help")
        assert helped.returncode == 0 and "usage: cnmctl" in helped.stdout, command
    # An empty node (no store yet) lists nothing and creates nothing.
    assert cnmctl(lab, "endpoint", "ls").stdout.split() == "ENDPOINT NETWORK CONTAINER IFNAME DRIVER STATE IPS MAC " \
                                                          "HOST LINK SANDBOX".split()
    assert not os.path.exists(lab.env["CNM_STATE_DIR"])


def test_sandbox_and_endpoint_views(two_pods):
    lab, pods = two_pods
    boxes = json.loads(cnmctl(lab, "sandbox", "ls", "--format", "json").stdout)
    assert sorted(b["Members"] for b in boxes) == [["c1"], ["c2"]]
    assert {b["State"] for b in boxes} == {"ready"}
    table = cnmctl(lab, "sandbox", "ls").stdout.splitlines()
    assert table[0].split()[:4] == ["SANDBOX", "STATE", "MEMBERS", "ENDPOINTS"]
    assert len(table) == 3 and all(" ready " in r for r in table[1:])

    [box] = json.loads(cnmctl(lab, "sandbox", "inspect", "c2").stdout)  # by member container id
    assert box["Netns"] == pods["c2"] and box["Pin"].startswith(lab.env["CNM_RUN_DIR"])
    assert [e["ContainerID"] for e in box["Endpoints"]] == ["c2"]

    eps = cnmctl(lab, "endpoint", "ls", "--container", "c1")
    assert eps.returncode == 0
    header, row = eps.stdout.splitlines()
    mac, addrs = kernel_view(lab, pods["c1"])
    assert row.split()[1:8] == [lab.network, "c1", "eth0", "bridge", "active", addrs[0], mac]
    assert len(json.loads(cnmctl(lab, "endpoint", "ls", "-f", "json", "--network", lab.network).stdout)) == 2
    assert json.loads(cnmctl(lab, "endpoint", "ls", "-f", "json", "--network", "other").stdout) == []


def findings(proc) -> list[dict]:
    return json.loads(proc.stdout)


def errors_of(proc, check: str) -> list[dict]:
    return [f for f in findings(proc) if f["check"] == check and f["severity"] == "error"]


def test_doctor_healthy_node_then_config_problems(two_pods):
    lab, _ = two_pods
    write_conflist(lab, "10-lab.conflist", bridge_list(lab))
    healthy = cnmctl(lab, "doctor", "--format", "json")
    assert healthy.returncode == 0, healthy.stdout
    assert not [f for f in findings(healthy) if f["severity"] == "error"]
    assert any(f["check"] == "config" and f["severity"] == "ok" and lab.network in f["message"]
               for f in findings(healthy))

    bad_json = write_conflist(lab, "20-broken.conflist", '{"cniVersion": "1.0.0", "name": ')
    missing = write_conflist(lab, "30-missing.conflist", {"cniVersion": "1.0.0", "name": unique("miss", 20),
                                                          "plugins": [{"type": "cnm-no-such-plugin"}]})
    old = write_conflist(lab, "40-old.conflist", {"cniVersion": "9.9.9", "name": unique("old", 20),
                                                  "plugins": [{"type": "cnm-none"}]})
    sick = cnmctl(lab, "doctor", "--format", "json")
    assert sick.returncode == 1
    by_file = {path: [f for f in errors_of(sick, "config") if f["message"].startswith(path)]
               for path in (bad_json, missing, old)}
    assert "does not parse" in by_file[bad_json][0]["message"] and by_file[bad_json][0]["fix"]
    assert "cnm-no-such-plugin" in by_file[missing][0]["message"] and "CNI_PATH" in by_file[missing][0]["fix"]
    assert "9.9.9" in by_file[old][0]["message"] and "cniVersion" in by_file[old][0]["fix"]
    text = cnmctl(lab, "doctor")
    assert text.returncode == 1 and "[FAIL] config:" in text.stdout and "fix:" in text.stdout


def test_doctor_state_dir_permissions(two_pods):
    lab, _ = two_pods
    state = lab.env["CNM_STATE_DIR"]
    os.chmod(state, 0o755)
    try:
        proc = cnmctl(lab, "doctor", "-f", "json")
        [finding] = errors_of(proc, "state")
        assert proc.returncode == 1 and f"chmod 0700 {state}" == finding["fix"]
    finally:
        os.chmod(state, 0o700)
    assert not errors_of(cnmctl(lab, "doctor", "-f", "json"), "state")


def test_doctor_reports_stale_state(two_pods):
    lab, pods = two_pods
    assert not errors_of(cnmctl(lab, "doctor", "-f", "json"), "stale")
    # c1's namespace vanishes behind our back (its pin unmounted, the runtime's netns deleted)...
    [box] = json.loads(cnmctl(lab, "sandbox", "inspect", "c1").stdout)
    subprocess.run(["umount", box["Pin"]], check=True)
    subprocess.run(["ip", "netns", "del", os.path.basename(pods["c1"])], check=True)
    # ... and a veth of this store (tagged with its id), owned by no endpoint, appears on the host.
    ghost = os.urandom(12).hex()
    orphan = "cnm" + ghost[:12]
    sh("ip", "link", "add", orphan, "type", "veth", "peer", "name", unique("cnmp"), ns=lab.host)
    sh("ip", "link", "set", orphan, "alias", f"{ghost}@{store_id(lab.env)[:12]}", ns=lab.host)
    proc = cnmctl(lab, "doctor", "-f", "json")
    assert proc.returncode == 1
    stale = {f["message"].split(":")[0] for f in errors_of(proc, "stale")}
    assert stale == {f"stale release {box['Id']}", f"stale veth {orphan}"}, proc.stdout
    assert all("cnmctl gc" in f["fix"] for f in errors_of(proc, "stale"))
    assert [b["State"] for b in json.loads(cnmctl(lab, "sandbox", "inspect", "c1").stdout)] == ["gone"]
    # What doctor reported is what the node-wide `cnmctl gc` removes; then doctor is clean.
    gc = cnmctl(lab, "gc", "--format", "json")
    assert gc.returncode == 0, gc
    removed = {(a["kind"], a["name"]) for a in json.loads(gc.stdout)["removed"]}
    assert {("release", box["Id"]), ("veth", orphan)} <= removed
    after = cnmctl(lab, "doctor", "-f", "json")
    assert not errors_of(after, "stale") and after.returncode == 0, after.stdout
    assert [e["ContainerID"] for e in json.loads(cnmctl(lab, "endpoint", "ls", "-f", "json").stdout)] == ["c2"]


def test_doctor_calls_a_lease_this_store_did_not_write_foreign_and_gc_keeps_it(netns, cnm_env, tmp_path):
    """Issue 20, finding 3: a lease written by another plugin (host-local, for a pod running
    since before a migration) is foreign, not stale: doctor says so, `cnmctl gc` keeps it,
    and the address is not handed out twice."""
    lab = Lab(netns, cnm_env, tmp_path, ipam_type="cnm-ipam")
    lab.confdir, lab.log = tmp_path / "net.d", tmp_path / "cnm.log"
    lab.confdir.mkdir()
    ns = lab.container()
    lab.add(lab.conf(), ns, cid="c1")
    try:
        assert not errors_of(cnmctl(lab, "doctor", "-f", "json"), "stale")
        ghost = os.path.join(lab.data_dir, lab.network, "10.250.0.99")
        with open(ghost, "w") as f:  # host-local's lease of a running pod, from before the migration
            f.write("ghost\r\neth0")
        proc = cnmctl(lab, "doctor", "-f", "json")
        assert not errors_of(proc, "stale"), proc.stdout
        [foreign] = [f for f in findings(proc) if f["check"] == "stale" and "10.250.0.99" in f["message"]]
        assert foreign["severity"] == "ok" and "foreign" in foreign["message"] and "ghost/eth0" in foreign["message"]
        gc = json.loads(cnmctl(lab, "gc", "--format", "json").stdout)
        assert gc["removed"] == [] and os.path.exists(ghost)
        taken = lab.run("ADD", lab.conf(), lab.container(), cid="c2", args="IP=10.250.0.99")
        assert taken.rc != 0 and "10.250.0.99" in taken.json["msg"] + taken.json["details"], taken
    finally:
        assert lab.run("DEL", lab.conf(), ns, cid="c1").rc == 0
        os.unlink(ghost)
    lab.assert_nothing_left()


def test_shared_sandbox_shows_both_members(lab):
    """A proxy joins the web pod's stack (cnm-container): one sandbox, two members; the
    joiner's endpoint reports the shared IP; after the owner's DEL its endpoint is kept."""
    ns = lab.container()
    lab.add(lab.conf(), ns, cid="web")
    joiner = {"cniVersion": "1.0.0", "name": unique("shared", 20), "type": "cnm-container", "container": "web"}
    assert lab.run("ADD", joiner, ns, cid="proxy", plugin="cnm-container").rc == 0
    try:
        [box] = json.loads(cnmctl(lab, "sandbox", "inspect", "proxy").stdout)
        assert box["Members"] == ["proxy", "web"] and box["State"] == "ready"
        eps = {e["ContainerID"]: e for e in box["Endpoints"]}
        assert eps["proxy"]["Driver"] == "container" and eps["web"]["Driver"] == "bridge"
        assert eps["proxy"]["IPs"] == eps["web"]["IPs"] == lab.addrs("eth0", ns)  # one stack, one address
        assert lab.run("DEL", lab.conf(), ns, cid="web").rc == 0
        table = cnmctl(lab, "endpoint", "ls", "--container", "web").stdout.splitlines()
        assert table[1].split()[5] == "kept"  # held for the proxy, which still shares the stack
    finally:
        lab.run("DEL", lab.conf(), ns, cid="web")
        assert lab.run("DEL", joiner, ns, cid="proxy", plugin="cnm-container").rc == 0
    assert json.loads(cnmctl(lab, "endpoint", "ls", "-f", "json").stdout) == []


def test_doctor_forwarding_off_under_live_endpoints(two_pods):
    lab, _ = two_pods
    assert lab.sysctl("net.ipv4.ip_forward") == "1"  # the gateway ADD turned it on
    sh("sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward", ns=lab.host)  # the test's own host netns
    proc = cnmctl(lab, "doctor", "-f", "json")
    [finding] = errors_of(proc, "forwarding")
    assert proc.returncode == 1 and "2 IPv4 bridge endpoint(s)" in finding["message"]
    assert finding["fix"].startswith("sysctl -w net.ipv4.ip_forward=1")
    assert not [f for f in findings(proc) if f["check"] == "forwarding" and "IPv6" in f["message"]
                and f["severity"] != "ok"]  # no IPv6 endpoint: IPv6 forwarding is no concern


def test_doctor_without_nft(lab, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = cnmctl(lab, "doctor", "-f", "json", PATH=str(empty))  # nft not on PATH
    [finding] = errors_of(proc, "nft")
    assert proc.returncode == 1 and "not installed" in finding["message"] and "nftables" in finding["fix"]
    assert [f["severity"] for f in findings(cnmctl(lab, "doctor", "-f", "json")) if f["check"] == "nft"] == ["ok"]


def test_doctor_warns_about_an_unwritable_log(lab, tmp_path):
    proc = cnmctl(lab, "doctor", "-f", "json", CNM_LOG_FILE=str(tmp_path / "missing" / "cnm.log"))
    [finding] = [f for f in findings(proc) if f["check"] == "log"]
    assert finding["severity"] == "warning" and "CNM_LOG_FILE" in finding["fix"]


def test_doctor_and_gc_after_an_add_killed_before_its_commit(two_pods):
    """An ADD with a published port dies (like SIGKILL) after the kernel work, before the
    store commit: its veth, nftables elements (masquerade, ports) and pin have no record.
    doctor names them; the node-wide gc removes exactly them; doctor is clean again."""
    lab, _ = two_pods
    ns = lab.container()
    conf = dict(lab.conf(isGateway=True, ipMasq=True),
                runtimeConfig={"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]})
    killed = exec_plugin(
        "cnm-bridge", "ADD", conf, lab.env, container_id="c3", netns=ns, ifname="eth0", host_netns=lab.host,
        extra_env={"CNM_FAULT": "add:before-commit", "CNM_HELPER_SOCKET": "off"})  # the fault kills this process
    assert killed.rc == 137, killed
    ep_id = endpoint_id(lab.network, "c3", "eth0")
    proc = cnmctl(lab, "doctor", "-f", "json")
    [stale] = errors_of(proc, "stale")  # its intent (recorded before any change) names all of it
    assert stale["message"].startswith("stale finish ") and "c3/eth0 (adding)" in stale["message"], proc.stdout
    gc = cnmctl(lab, "gc", "--format", "json")
    assert gc.returncode == 0, gc
    after = cnmctl(lab, "doctor", "-f", "json")
    assert not errors_of(after, "stale"), after.stdout
    assert not [e for e in lab.nft_elements() if ep_id in e[3]]  # the kernel agrees
    assert lab.run("DEL", conf, ns, cid="c3").rc == 0  # what the runtime sends next: a no-op now


def test_gc_reports_a_sweep_it_could_not_make(two_pods, tmp_path):
    """Attack on the plan/apply split (atk22, finding 1): when a driver's sweep fails (here nft
    cannot be run while live endpoints have published ports), `cnmctl doctor` reports it, but
    the node-wide `cnmctl gc` said "nothing stale" and exited 0: apply() dropped the plan's
    failed steps. It lists them as errors and exits 1, as doctor does."""
    lab, _ = two_pods
    empty = tmp_path / "bin-without-nft"
    empty.mkdir()
    no_nft = {"PATH": str(empty), "CNM_NFT": "exec"}
    doctor = [f for f in errors_of(cnmctl(lab, "doctor", "-f", "json", **no_nft), "stale")]
    assert any("NftUnavailable" in f["message"] for f in doctor), doctor
    gc = cnmctl(lab, "gc", "--format", "json", **no_nft)
    assert gc.returncode == 1, gc
    errors = json.loads(gc.stdout)["errors"]
    assert any(e["kind"] == "bridge" and "NftUnavailable" in e["error"] for e in errors), errors
    table = cnmctl(lab, "gc", **no_nft)
    assert table.returncode == 1 and "NftUnavailable" in table.stdout, table
    assert cnmctl(lab, "gc").returncode == 0  # with nft: nothing stale, nothing failed
