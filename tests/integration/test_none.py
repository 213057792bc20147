"""cnm-none (Docker's --net=none) in real network namespaces, executed as a runtime does,
in every spec version (issue 2 items 5 and 7)."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

from support.bridge import store_rows
from support.common import ALL_VERSIONS, BIN, GO_PLUGINS, exec_plugin, unique, pin_names, pin_path

LOOPBACK_MAC = "00:00:00:00:00:00"
OLD = ("0.1.0", "0.2.0")


def conf(version="1.1.0", name=None, **extra):
    return {"cniVersion": version, "name": name or unique("none", 30), "type": "cnm-none", **extra}


def ip_json(*args, netns: str | None = None):
    cmd = ["ip", "-j"] + (["-n", os.path.basename(netns)] if netns else []) + list(args)
    return json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout or b"[]")


def lo_state(netns: str | None = None) -> tuple[bool, list[str]]:
    """(lo is up, its addresses as cidr) from the kernel."""
    info = ip_json("addr", "show", "dev", "lo", netns=netns)[0]
    return "UP" in info["flags"], sorted(f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", []))


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)




def expected_result(version: str, netns: str, addrs: list[str]) -> dict:
    v4 = [a for a in addrs if ":" not in a]
    v6 = [a for a in addrs if ":" in a]
    if version in OLD:
        out = {"cniVersion": version, "ip4": {"ip": v4[0]}}
        if v6:
            out["ip6"] = {"ip": v6[0]}
        out["dns"] = {}
        return out
    ips = []
    for a in v4 + v6:
        entry = {"address": a, "interface": 0}
        if version < "1.0.0":
            entry = {"version": "6" if ":" in a else "4", **entry}
        ips.append(entry)
    return {"cniVersion": version, "interfaces": [{"name": "lo", "mac": LOOPBACK_MAC, "sandbox": netns}], "ips": ips,
            "dns": {}}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_in_every_version(version, netns, run_plugin, cnm_env):
    ns = netns("cnmnone")
    cid = unique("c", 40)
    config = conf(version)
    attach = dict(container_id=cid, netns=ns, ifname="lo")
    assert lo_state(ns)[0] is False  # a fresh netns: lo down

    add = run_plugin("cnm-none", "ADD", config, **attach)
    assert add.rc == 0, add
    up, addrs = lo_state(ns)
    assert up and "127.0.0.1/8" in addrs
    assert add.json == expected_result(version, ns, addrs)
    assert add.stderr == b""
    # Recorded and pinned.
    assert [r[0] for r in store_rows(cnm_env, "sandboxes")] == [cid]
    assert mounted(pin_path(cnm_env, cid))

    if version >= "0.4.0":
        check = run_plugin("cnm-none", "CHECK", dict(config, prevResult=add.json), **attach)
        assert (check.rc, check.stdout) == (0, b""), check
    else:
        check = run_plugin("cnm-none", "CHECK", config, **attach)
        assert check.rc != 0 and check.json["code"] == 1

    delete = run_plugin("cnm-none", "DEL", dict(config, prevResult=add.json) if version >= "0.4.0" else config, **attach)
    assert (delete.rc, delete.stdout) == (0, b""), delete
    assert lo_state(ns)[0] is False
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []
    assert not mounted(pin_path(cnm_env, cid)) and not os.path.exists(pin_path(cnm_env, cid))

    again = run_plugin("cnm-none", "DEL", config, **attach)
    assert (again.rc, again.stdout) == (0, b""), again


def test_ipv6_disabled_gives_only_127(netns, run_plugin):
    ns = netns("cnmnone")
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                   check=True)
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"],
                   check=True)
    cid = unique("c", 40)
    add = run_plugin("cnm-none", "ADD", conf("1.0.0"), container_id=cid, netns=ns, ifname="lo")
    assert add.rc == 0, add
    assert add.json["ips"] == [{"address": "127.0.0.1/8", "interface": 0}]
    add = run_plugin("cnm-none", "DEL", conf("1.0.0"), container_id=cid, netns=ns, ifname="lo")


@pytest.fixture
def added(netns, run_plugin, cnm_env):
    """A cnm-none attachment at 1.0.0: (netns, config, attach kwargs, ADD result)."""
    ns = netns("cnmnone")
    config = conf("1.0.0")
    attach = dict(container_id=unique("c", 40), netns=ns, ifname="lo")
    add = run_plugin("cnm-none", "ADD", config, **attach)
    assert add.rc == 0, add
    yield ns, config, attach, add.json
    run_plugin("cnm-none", "DEL", config, **attach)


def test_check_fails_when_lo_is_down(added, run_plugin):
    ns, config, attach, result = added
    subprocess.run(["ip", "-n", os.path.basename(ns), "link", "set", "lo", "down"], check=True)
    check = run_plugin("cnm-none", "CHECK", dict(config, prevResult=result), **attach)
    assert check.rc != 0 and check.json["code"] >= 100 and "down" in check.json["msg"], check


def test_check_fails_on_a_non_loopback_address(added, run_plugin):
    ns, config, attach, result = added
    subprocess.run(["ip", "-n", os.path.basename(ns), "addr", "add", "10.254.0.9/32", "dev", "lo"], check=True)
    check = run_plugin("cnm-none", "CHECK", dict(config, prevResult=result), **attach)
    assert check.rc != 0 and check.json["code"] >= 100, check
    assert "10.254.0.9" in check.json["details"]


def test_check_fails_without_add(netns, run_plugin):
    ns = netns("cnmnone")
    check = run_plugin("cnm-none", "CHECK", conf("1.0.0"), container_id="never-added", netns=ns, ifname="lo")
    assert check.rc != 0 and check.json["code"] >= 100


def test_second_add_of_the_same_attachment(added, run_plugin):
    """The same ADD again (a runtime retrying what it believes failed) gets the same result;
    an ADD of the attachment with another config is refused (DEL it first)."""
    ns, config, attach, first = added
    again = run_plugin("cnm-none", "ADD", config, **attach)
    assert again.rc == 0 and again.json == first, again
    other = run_plugin("cnm-none", "ADD", dict(config, logLevel="debug"), **attach)
    assert other.rc != 0 and other.json["code"] == 102, other


def test_del_with_empty_netns_still_sets_lo_down_and_forgets(added, run_plugin, cnm_env):
    ns, config, attach, _ = added
    delete = run_plugin("cnm-none", "DEL", config, **dict(attach, netns=""))
    assert (delete.rc, delete.stdout) == (0, b""), delete
    assert lo_state(ns)[0] is False  # done through the sandbox's own pin
    assert store_rows(cnm_env, "sandboxes") == []
    assert not mounted(pin_path(cnm_env, attach["container_id"]))
    assert run_plugin("cnm-none", "DEL", config, **dict(attach, netns="")).rc == 0


def test_del_after_the_netns_was_deleted(added, run_plugin, cnm_env):
    ns, config, attach, _ = added
    subprocess.run(["ip", "netns", "del", os.path.basename(ns)], check=True)
    assert not os.path.exists(ns)
    for _ in range(2):
        delete = run_plugin("cnm-none", "DEL", config, **attach)
        assert (delete.rc, delete.stdout) == (0, b""), delete
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []
    assert not mounted(pin_path(cnm_env, attach["container_id"]))


def test_del_of_an_unknown_attachment_with_a_missing_netns(run_plugin):
    delete = run_plugin("cnm-none", "DEL", conf(), container_id="nobody", netns="/run/netns/does-not-exist", ifname="lo")
    assert (delete.rc, delete.stdout) == (0, b""), delete


@pytest.mark.parametrize("prev_version", ALL_VERSIONS)
def test_prev_result_of_another_version_is_passed_through_converted(prev_version, netns, run_plugin):
    """Chained after another plugin, cnm-none returns the prevResult in the config's version."""
    ns = netns("cnmnone")
    if prev_version in OLD:
        prev = {"cniVersion": prev_version, "ip4": {"ip": "10.22.0.5/24", "gateway": "10.22.0.1"}, "dns": {}}
    else:
        prev = {"cniVersion": prev_version, "interfaces": [{"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": ns}],
                "ips": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 0}]}
        if prev_version < "1.0.0":
            prev["ips"][0]["version"] = "4"
    config = conf("1.0.0", prevResult=prev)
    attach = dict(container_id=unique("c", 40), netns=ns, ifname="lo")
    add = run_plugin("cnm-none", "ADD", config, **attach)
    assert add.rc == 0, add
    assert add.json["cniVersion"] == "1.0.0"
    assert add.json["ips"][0]["address"] == "10.22.0.5/24" and add.json["ips"][0]["gateway"] == "10.22.0.1"
    assert all("version" not in ip for ip in add.json["ips"])
    assert lo_state(ns)[0] is True
    assert run_plugin("cnm-none", "DEL", config, **attach).rc == 0


# ---- containerd's loopback slot ----------------------------------------------------------------


@pytest.fixture
def loopback_dir(tmp_path):
    """A CNI_PATH dir where cnm-none is installed under containerd's name `loopback`."""
    d = tmp_path / "cni-bin"
    d.mkdir()
    os.symlink(os.path.join(BIN, "cnm"), d / "loopback")
    return str(d)


def test_as_containerd_loopback_beside_another_attachment(netns, cnm_env, loopback_dir):
    """containerd's built-in loopback network (0.3.1, ifname lo) set up in parallel with eth0."""
    host = netns("cnmhost")  # a throwaway "host": the eth0 plugin (Go host-device) moves a link from here
    pod = netns("cnmpod")
    dev = unique("cnmv", 15)
    subprocess.run(["ip", "-n", os.path.basename(host), "link", "add", dev, "type", "veth", "peer", "name",
                    unique("cnmp", 15)], check=True)
    cid = unique("pod", 40)
    lo_conf = {"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"}
    eth_conf = {"cniVersion": "0.3.1", "name": unique("podnet", 30), "type": "host-device", "device": dev}  # moved into the pod as eth0
    env = dict(cnm_env, CNI_PATH=f"{loopback_dir}:{GO_PLUGINS}")
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=" + cid

    def eth0(command):
        full = dict(env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=pod, CNI_IFNAME="eth0", CNI_ARGS=args)
        return subprocess.run(["ip", "netns", "exec", os.path.basename(host), os.path.join(GO_PLUGINS, "host-device")],
                              input=json.dumps(eth_conf).encode(), env=full, capture_output=True, timeout=60)

    results = {}
    threads = [
        threading.Thread(target=lambda: results.__setitem__("lo", exec_plugin(
            "loopback", "ADD", lo_conf, env, container_id=cid, netns=pod, ifname="lo", args=args,
            directory=loopback_dir))),
        threading.Thread(target=lambda: results.__setitem__("eth0", eth0("ADD"))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert results["lo"].rc == 0, results["lo"]
        assert results["eth0"].returncode == 0, results["eth0"]
        lo = results["lo"].json
        assert lo["cniVersion"] == "0.3.1"
        assert lo["interfaces"] == [{"name": "lo", "mac": LOOPBACK_MAC, "sandbox": pod}]
        assert {"version": "4", "address": "127.0.0.1/8", "interface": 0} in lo["ips"]
        assert lo_state(pod) == (True, lo_state(pod)[1])
        links = {l["ifname"]: l for l in ip_json("link", "show", netns=pod)}
        assert set(links) == {"lo", "eth0"}
        # containerd's DEL walks the networks in load order (lo first), with the same args.
        delete = exec_plugin("loopback", "DEL", lo_conf, env, container_id=cid, netns=pod, ifname="lo", args=args,
                             directory=loopback_dir)
        assert (delete.rc, delete.stdout) == (0, b""), delete
        assert eth0("DEL").returncode == 0
        assert lo_state(pod)[0] is False
        assert set(l["ifname"] for l in ip_json("link", "show", netns=pod)) == {"lo"}
        assert store_rows(cnm_env, "sandboxes") == []
    finally:
        eth0("DEL")


# ---- the host-netns guard (R10, issue 2 item 7) ------------------------------------------------


@pytest.fixture
def host_netns_bind(tmp_path):
    """The host netns under a path that looks like any runtime's: a bind mount in a tmp dir."""
    target = tmp_path / "looks-like-a-pod-netns"
    target.touch()
    subprocess.run(["mount", "--bind", f"/proc/{os.getpid()}/ns/net", str(target)], check=True)
    yield str(target)
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.parametrize("path", ["/proc/self/ns/net", "/proc/{pid}/ns/net", "bind"])
def test_add_into_the_host_netns_is_refused_and_changes_nothing(path, run_plugin, cnm_env, request):
    # Same namespace by nsfs identity, under three different paths.
    path = request.getfixturevalue("host_netns_bind") if path == "bind" else path.format(pid=os.getpid())
    before = lo_state()
    for version in ("0.3.1", "1.0.0"):
        add = run_plugin("cnm-none", "ADD", conf(version), container_id=unique("c", 40), netns=path, ifname="lo")
        assert add.rc != 0 and add.json["code"] == 8, add
        assert add.json["cniVersion"] == version
        assert path in add.json["details"] and "CNI_NETNS_OVERRIDE" in add.json["details"]
    for override in ("0", "false", "yes"):
        add = run_plugin("cnm-none", "ADD", conf(), container_id="c1", netns=path, ifname="lo",
                         extra_env={"CNI_NETNS_OVERRIDE": override})
        assert add.rc != 0 and add.json["code"] == 8, add
    # A DEL naming the host netns for something never added touches nothing either.
    assert run_plugin("cnm-none", "DEL", conf(), container_id="c1", netns=path, ifname="lo").rc == 0
    assert lo_state() == before
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []
    pins = os.path.join(cnm_env["CNM_RUN_DIR"], "netns")
    assert not os.path.isdir(pins) or os.listdir(pins) == []


def exec_in(netns_path: str, plugin: str, command: str, config, env: dict, **attach) -> subprocess.CompletedProcess:
    """Run a plugin whose own netns is `netns_path` (so that netns is "the host" for it)."""
    full = dict(env, CNI_COMMAND=command, CNI_CONTAINERID=attach.get("container_id", ""),
                CNI_NETNS=attach.get("netns", ""), CNI_IFNAME=attach.get("ifname", ""), CNI_ARGS="")
    full.update(attach.get("extra_env", {}))
    return subprocess.run(["ip", "netns", "exec", os.path.basename(netns_path), os.path.join(BIN, plugin)],
                          input=json.dumps(config).encode(), env=full, capture_output=True, timeout=60)


@pytest.mark.parametrize("override", ["1", "true", "TRUE"])
def test_override_lets_the_plugin_use_its_own_netns(override, netns, cnm_env):
    """Run inside a netns we made, so "the plugin's own netns" is ours to change, never the host's."""
    own = netns("cnmown")
    config = conf("1.0.0")
    attach = dict(container_id=unique("c", 40), netns=own, ifname="lo")
    refused = exec_in(own, "cnm-none", "ADD", config, cnm_env, **attach)
    assert refused.returncode != 0 and json.loads(refused.stdout)["code"] == 8
    assert lo_state(own)[0] is False
    add = exec_in(own, "cnm-none", "ADD", config, cnm_env, **attach, extra_env={"CNI_NETNS_OVERRIDE": override})
    assert add.returncode == 0, add
    assert json.loads(add.stdout)["interfaces"][0]["sandbox"] == own
    assert lo_state(own)[0] is True
    delete = exec_in(own, "cnm-none", "DEL", config, cnm_env, **attach, extra_env={"CNI_NETNS_OVERRIDE": override})
    assert delete.returncode == 0, delete
    assert lo_state(own)[0] is False


def test_conf_none_conflist_through_cnmctl(netns, cnm_env, tmp_path):
    """conf/none.conflist run as cnitool does (cnmctl add/check/del), with ifname lo."""
    ns = netns("cnmnone")
    env = dict(cnm_env, NETCONFPATH=os.path.join(os.path.dirname(BIN), "conf"), CNI_PATH=BIN,
               CNI_CACHE_DIR=str(tmp_path / "cache"), CNI_IFNAME="lo")

    def cnmctl(*args):
        return subprocess.run([os.path.join(BIN, "cnmctl"), *args], env=env, capture_output=True, timeout=60)

    add = cnmctl("add", "none", ns)
    assert add.returncode == 0, add
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.1.0" and result["interfaces"][0]["name"] == "lo"
    assert lo_state(ns)[0] is True
    assert cnmctl("check", "none", ns).returncode == 0
    assert cnmctl("del", "none", ns).returncode == 0
    assert lo_state(ns)[0] is False
    assert store_rows(cnm_env, "sandboxes") == []
