"""The runner's libcni semantics, observed from the plugin side.

A tiny recording plugin (a real executable, exec'd with env + stdin like any other)
logs what it receives and answers as its config tells it; the runner under test is
cni_plugins.runtime.libcni. Interop with libcni itself (cnitool) is in tests/e2e.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from cni_plugins.runtime import cache, conf
from cni_plugins.runtime.errors import PluginError, RunnerError
from cni_plugins.runtime.libcni import CNIRunner, RuntimeConf

RECORDER = r'''#!/usr/bin/python3 -S
import json, os, sys
name = os.path.basename(sys.argv[0])
data = sys.stdin.read()
cfg = json.loads(data) if data.strip() else {}
cmd = os.environ.get("CNI_COMMAND", "")
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(os.environ["REC_LOG"], "a") as log:
    log.write(json.dumps({"plugin": name, "cmd": cmd, "env": env, "conf": cfg}) + "\n")
ver = cfg.get("cniVersion", "")
if cmd == "VERSION":
    print(json.dumps({"cniVersion": ver, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
if cmd in cfg.get("failOn", []):
    if cfg.get("stderrOnly"):
        sys.stderr.write("plain failure text\n")
    else:
        print(json.dumps({"cniVersion": ver, "code": 111, "msg": "failed on " + cmd, "details": name}))
    sys.exit(1)
if cmd == "ADD":
    res = dict(cfg.get("prevResult") or {"cniVersion": ver, "interfaces": [], "ips": []})
    res["cniVersion"] = ver
    res.setdefault("interfaces", []).append({"name": name, "mac": "02:00:00:00:00:01",
                                             "sandbox": os.environ["CNI_NETNS"]})
    if "ip" in cfg:
        ip = {"address": cfg["ip"], "interface": len(res["interfaces"]) - 1}
        if ver.startswith("0."):
            ip["version"] = "4"
        res.setdefault("ips", []).append(ip)
    if cfg.get("omitVersion"):
        del res["cniVersion"]
    print(json.dumps(res))
'''


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A bin dir with recording plugins rec-a, rec-b, rec-c, a log, a cache dir."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    rec = bindir / "rec"
    rec.write_text(RECORDER)
    rec.chmod(0o755)
    for name in ("rec-a", "rec-b", "rec-c"):
        os.symlink("rec", bindir / name)
    log = tmp_path / "log"
    monkeypatch.setenv("REC_LOG", str(log))

    class Lab:
        cache_dir = str(tmp_path / "cache")
        runner = CNIRunner([str(tmp_path / "nothing"), str(bindir)], str(tmp_path / "cache"))

        @staticmethod
        def calls():
            if not log.exists():
                return []
            out = [json.loads(line) for line in log.read_text().splitlines()]
            log.unlink()
            return out

    return Lab


def netlist(plugins, version="1.0.0", **top):
    doc = {"cniVersion": version, "name": "recnet", "plugins": plugins, **top}
    return conf.conflist_from_bytes(json.dumps(doc).encode())


RT = RuntimeConf("ctr-1", "/run/netns/some", "eth0", [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")], {})


def test_add_runs_in_order_and_chains_results(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}, {"type": "rec-b"}, {"type": "rec-c"}])
    result = lab.runner.add_network_list(net, RT)
    calls = lab.calls()
    assert [c["plugin"] for c in calls] == ["rec-a", "rec-b", "rec-c"]
    assert all(c["conf"]["name"] == "recnet" and c["conf"]["cniVersion"] == "1.0.0" for c in calls)
    assert "prevResult" not in calls[0]["conf"]
    assert [i["name"] for i in calls[2]["conf"]["prevResult"]["interfaces"]] == ["rec-a", "rec-b"]
    assert [i["name"] for i in result["interfaces"]] == ["rec-a", "rec-b", "rec-c"]
    assert result["ips"] == [{"address": "10.0.0.2/24", "interface": 0}]
    env = calls[0]["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert (env["CNI_CONTAINERID"], env["CNI_NETNS"], env["CNI_IFNAME"]) == ("ctr-1", "/run/netns/some", "eth0")
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert env["CNI_PATH"] == os.pathsep.join(lab.runner.path)


def test_add_caches_in_libcni_format(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}])
    rt = RuntimeConf("ctr-1", "/run/netns/x", "eth0", [("A", "1")], {"portMappings": [{"hostPort": 80}]})
    result = lab.runner.add_network_list(net, rt)
    path = os.path.join(lab.cache_dir, "results", "recnet-ctr-1-eth0")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    doc = json.load(open(path))
    assert list(doc) == ["kind", "containerId", "config", "ifName", "networkName", "netns", "cniArgs",
                         "capabilityArgs", "result"]
    assert doc["kind"] == "cniCacheV1"
    assert base64.b64decode(doc["config"]) == net.raw
    assert (doc["containerId"], doc["ifName"], doc["networkName"], doc["netns"]) == ("ctr-1", "eth0", "recnet",
                                                                                     "/run/netns/x")
    assert doc["cniArgs"] == [["A", "1"]]
    assert doc["capabilityArgs"] == {"portMappings": [{"hostPort": 80}]}
    assert doc["result"] == result
    # Empty fields are omitted, as Go's omitempty does.
    lab.runner.add_network_list(net, RuntimeConf("ctr-2", "/x", "eth0"))
    doc = json.load(open(os.path.join(lab.cache_dir, "results", "recnet-ctr-2-eth0")))
    assert "cniArgs" not in doc and "capabilityArgs" not in doc


def test_runtime_config_is_the_capability_intersection(lab):
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80}], "bandwidth": {"ingressRate": 1}}
    net = netlist(
        [
            {"type": "rec-a", "capabilities": {"portMappings": True, "dns": True}},
            {"type": "rec-b", "capabilities": {"bandwidth": False}, "runtimeConfig": {"literal": 1}},
            {"type": "rec-c", "capabilities": {"bandwidth": True}, "runtimeConfig": {"literal": 1}},
        ]
    )
    lab.runner.add_network_list(net, RuntimeConf("c", "/n", "eth0", [], caps))
    a, b, c = (call["conf"] for call in lab.calls())
    assert a["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert a["capabilities"] == {"portMappings": True, "dns": True}  # passed through (R21)
    assert b["runtimeConfig"] == {"literal": 1}  # nothing matched: the literal one stays
    assert c["runtimeConfig"] == {"bandwidth": {"ingressRate": 1}}  # matched: replaced wholesale


def test_result_without_version_is_taken_as_the_config_version(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24", "omitVersion": True}, {"type": "rec-b"}], "0.4.0")
    result = lab.runner.add_network_list(net, RT)
    assert result["cniVersion"] == "0.4.0"
    assert lab.calls()[1]["conf"]["prevResult"]["cniVersion"] == "0.4.0"


def test_add_stops_at_the_first_error_and_caches_nothing(lab):
    net = netlist([{"type": "rec-a"}, {"type": "rec-b", "failOn": ["ADD"]}, {"type": "rec-c"}])
    with pytest.raises(PluginError) as info:
        lab.runner.add_network_list(net, RT)
    assert info.value.code == 111
    assert 'plugin type="rec-b" failed (add)' in str(info.value)
    assert [c["plugin"] for c in lab.calls()] == ["rec-a", "rec-b"]
    assert not os.path.exists(os.path.join(lab.cache_dir, "results", "recnet-ctr-1-eth0"))


@pytest.mark.parametrize(
    "rt, code",
    [
        (RuntimeConf("", "/n", "eth0"), 3),
        (RuntimeConf("bad id", "/n", "eth0"), 4),
        (RuntimeConf("c", "/n", "a-name-longer-than-15"), 4),
        (RuntimeConf("c", "/n", "eth0:1"), 4),
    ],
)
def test_add_validates_like_libcni_before_exec(lab, rt, code):
    with pytest.raises(PluginError) as info:
        lab.runner.add_network_list(netlist([{"type": "rec-a"}]), rt)
    assert info.value.code == code
    assert lab.calls() == []


def test_missing_plugin_names_the_path(lab):
    with pytest.raises(RunnerError, match=r'failed to find plugin "nope" in path \['):
        lab.runner.add_network_list(netlist([{"type": "nope"}]), RT)


def test_plugin_failure_without_error_object_reports_stderr(lab, capsys):
    net = netlist([{"type": "rec-a", "failOn": ["ADD"], "stderrOnly": True}])
    with pytest.raises(PluginError, match="netplugin failed: 'plain failure text'"):
        lab.runner.add_network_list(net, RT)
    assert "plain failure text" in capsys.readouterr().err  # also passed on, as libcni does


def test_del_runs_in_reverse_with_the_cached_result(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}, {"type": "rec-b"}], "0.4.0")
    added = lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.del_network_list(net, RT)
    calls = lab.calls()
    assert [c["plugin"] for c in calls] == ["rec-b", "rec-a"]
    assert all(c["conf"]["prevResult"] == added for c in calls)
    assert all(c["env"]["CNI_COMMAND"] == "DEL" for c in calls)
    assert cache.read(lab.cache_dir, "recnet", "ctr-1", "eth0") is None


def test_del_converts_the_cached_result_to_the_config_version(lab):
    added = lab.runner.add_network_list(netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}], "1.0.0"), RT)
    assert "version" not in added["ips"][0]
    lab.calls()
    lab.runner.del_network_list(netlist([{"type": "rec-a"}], "0.4.0"), RT)
    prev = lab.calls()[0]["conf"]["prevResult"]
    assert prev["cniVersion"] == "0.4.0" and prev["ips"][0]["version"] == "4"


def test_del_before_0_4_0_sends_no_prev_result(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}], "0.3.1")
    lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.del_network_list(net, RT)
    assert "prevResult" not in lab.calls()[0]["conf"]


def test_del_without_cache_and_with_a_broken_cache(lab):
    net = netlist([{"type": "rec-a"}])
    lab.runner.del_network_list(net, RT)
    assert "prevResult" not in lab.calls()[0]["conf"]
    path = os.path.join(lab.cache_dir, "results", "recnet-ctr-1-eth0")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("{garbage")
    lab.runner.del_network_list(net, RT)  # an unreadable cache never blocks teardown
    assert "prevResult" not in lab.calls()[0]["conf"]
    assert not os.path.exists(path)


def test_del_stops_at_the_first_error_and_keeps_the_cache(lab):
    net = netlist([{"type": "rec-a"}, {"type": "rec-b", "failOn": ["DEL"]}, {"type": "rec-c"}])
    lab.runner.add_network_list(net, RT)
    lab.calls()
    with pytest.raises(PluginError, match=r'plugin type="rec-b" failed \(delete\)'):
        lab.runner.del_network_list(net, RT)
    assert [c["plugin"] for c in lab.calls()] == ["rec-c", "rec-b"]
    assert cache.read(lab.cache_dir, "recnet", "ctr-1", "eth0") is not None


def test_legacy_bare_result_cache_is_read(lab):
    path = os.path.join(lab.cache_dir, "results", "recnet-ctr-1-eth0")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.1.1/24"}]}, f)
    lab.runner.del_network_list(netlist([{"type": "rec-a"}], "1.0.0"), RT)
    assert lab.calls()[0]["conf"]["prevResult"] == {"cniVersion": "1.0.0", "ips": [{"address": "10.1.1.1/24"}],
                                                        "dns": {}}


def test_check_uses_the_cached_result_in_order(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}, {"type": "rec-b"}])
    added = lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.check_network_list(net, RT)
    calls = lab.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls] == [("rec-a", "CHECK"), ("rec-b", "CHECK")]
    assert calls[0]["conf"]["prevResult"] == added


def test_check_needs_0_4_0_and_respects_disable_check(lab):
    with pytest.raises(RunnerError, match='configuration version "0.3.1" does not support the CHECK command'):
        lab.runner.check_network_list(netlist([{"type": "rec-a"}], "0.3.1"), RT)
    lab.runner.check_network_list(netlist([{"type": "rec-a", "failOn": ["CHECK"]}], disableCheck=True), RT)
    assert lab.calls() == []
    with pytest.raises(PluginError) as info:
        lab.runner.check_network_list(netlist([{"type": "rec-a", "failOn": ["CHECK"]}]), RT)
    assert info.value.code == 111


def test_gc_deletes_stale_cached_attachments_then_gcs_each_plugin(lab):
    net = netlist([{"type": "rec-a", "ip": "10.0.0.2/24"}, {"type": "rec-b"}], "1.1.0")
    for cid in ("keep", "stale"):
        lab.runner.add_network_list(net, RuntimeConf(cid, f"/run/netns/{cid}", "eth0", [("K", cid)], {"c": 1}))
    other = netlist([{"type": "rec-c"}], "1.1.0")
    other_doc = json.loads(other.raw)
    other_doc["name"] = "othernet"
    lab.runner.add_network_list(conf.conflist_from_bytes(json.dumps(other_doc).encode()), RuntimeConf("x", "/n", "eth0"))
    lab.calls()
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    lab.runner.gc_network_list(net, valid)
    calls = lab.calls()
    dels = [c for c in calls if c["env"]["CNI_COMMAND"] == "DEL"]
    assert [(c["plugin"], c["env"]["CNI_CONTAINERID"], c["env"]["CNI_NETNS"], c["env"]["CNI_ARGS"]) for c in dels] == [
        ("rec-b", "stale", "/run/netns/stale", "K=stale"),
        ("rec-a", "stale", "/run/netns/stale", "K=stale"),
    ]
    gcs = [c for c in calls if c["env"]["CNI_COMMAND"] == "GC"]
    assert [c["plugin"] for c in gcs] == ["rec-a", "rec-b"]
    for c in gcs:
        assert c["conf"]["cni.dev/valid-attachments"] == valid
        assert c["conf"]["cni.dev/attachments"] == valid
        assert "prevResult" not in c["conf"] and "runtimeConfig" not in c["conf"]
        assert (c["env"]["CNI_CONTAINERID"], c["env"]["CNI_NETNS"], c["env"]["CNI_IFNAME"]) == ("", "", "")
        assert c["env"]["CNI_PATH"]
    left = {(a.network, a.container_id) for a in lab.runner.get_cached_attachments()}
    assert left == {("recnet", "keep"), ("othernet", "x")}


def test_gc_without_a_list_deletes_every_attachment_and_sends_no_key(lab):
    net = netlist([{"type": "rec-a"}], "1.1.0")
    lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.gc_network_list(net, None)
    calls = lab.calls()
    assert [c["env"]["CNI_COMMAND"] for c in calls] == ["DEL", "GC"]
    assert "cni.dev/valid-attachments" not in calls[1]["conf"]
    assert lab.runner.get_cached_attachments() == []


def test_gc_before_1_1_0_only_deletes_and_disable_gc_does_nothing(lab):
    net = netlist([{"type": "rec-a"}], "1.0.0")
    lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.gc_network_list(net, [])
    assert [c["env"]["CNI_COMMAND"] for c in lab.calls()] == ["DEL"]
    lab.runner.add_network_list(net, RT)
    lab.calls()
    lab.runner.gc_network_list(netlist([{"type": "rec-a"}], "1.1.0", disableGC=True), [])
    assert lab.calls() == []


def test_gc_continues_past_errors_and_reports_them_all(lab):
    net = netlist([{"type": "rec-a", "failOn": ["DEL", "GC"]}, {"type": "rec-b"}], "1.1.0")
    lab.runner.add_network_list(net, RT)
    lab.calls()
    with pytest.raises(RunnerError) as info:
        lab.runner.gc_network_list(net, [])
    assert "failed to delete stale attachment ctr-1 eth0" in str(info.value)
    assert "failed to GC plugin rec-a" in str(info.value)
    assert [c["env"]["CNI_COMMAND"] for c in lab.calls()] == ["DEL", "DEL", "GC", "GC"]


def test_status_only_from_1_1_0_in_order_stopping_at_errors(lab):
    lab.runner.get_status_network_list(netlist([{"type": "rec-a", "failOn": ["STATUS"]}], "1.0.0"))
    assert lab.calls() == []
    net = netlist([{"type": "rec-a"}, {"type": "rec-b", "failOn": ["STATUS"]}, {"type": "rec-c"}], "1.1.0")
    with pytest.raises(PluginError, match=r'plugin type="rec-b" failed \(status\)'):
        lab.runner.get_status_network_list(net)
    calls = lab.calls()
    assert [c["plugin"] for c in calls] == ["rec-a", "rec-b"]
    assert calls[0]["env"]["CNI_COMMAND"] == "STATUS" and calls[0]["env"]["CNI_CONTAINERID"] == ""


def test_version_info_and_validation(lab):
    assert "1.1.0" in lab.runner.get_version_info("rec-a")
    call = lab.calls()[0]
    assert call["env"]["CNI_NETNS"] == "dummy" and call["conf"] == {"cniVersion": "1.1.0"}
    caps = lab.runner.validate_network_list(netlist([{"type": "rec-a", "capabilities": {"portMappings": True}}]))
    assert caps == ["portMappings"]
    with pytest.raises(RunnerError, match="does not support config version '0.2.0'"):
        lab.runner.validate_network_list(netlist([{"type": "rec-a"}], "0.2.0"))
    with pytest.raises(RunnerError, match="failed to find plugin"):
        lab.runner.validate_network_list(netlist([{"type": "missing"}]))


def test_cached_attachments_are_listed_like_libcni(lab):
    net = netlist([{"type": "rec-a"}])
    lab.runner.add_network_list(net, RuntimeConf("c1", "/n1", "eth0"))
    lab.runner.add_network_list(net, RuntimeConf("c1", "/n1", "eth1"))
    lab.runner.add_network_list(net, RuntimeConf("c2", "/n2", "eth0"))
    results = os.path.join(lab.cache_dir, "results")
    with open(os.path.join(results, "recnet-c3-eth0"), "w") as f:
        f.write('{"cniVersion":"0.4.0"}')  # legacy: not an attachment record
    assert [(a.container_id, a.ifname) for a in lab.runner.get_cached_attachments()] == [
        ("c1", "eth0"), ("c1", "eth1"), ("c2", "eth0")
    ]
    assert [(a.container_id, a.ifname, a.netns) for a in lab.runner.get_cached_attachments("c2")] == [
        ("c2", "eth0", "/n2")
    ]
