"""cnm-ipam allocation: host-local's order, requested IPs, dual stack, the exact files, and every command."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cni_plugins.cli.plugin import handle

ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def run(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0", args: str = ""):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": ifname,
           "CNI_ARGS": args}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None


def conf(tmp_path, version="1.1.0", **ipam) -> dict:
    return {"cniVersion": version, "name": "net1", "type": "cnm-bridge",
            "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"), **ipam}}


def add(c, cid="c1", ifname="eth0", args=""):
    rc, out = run("ADD", c, cid, ifname, args)
    assert rc == 0, out
    return [ip["address"] for ip in out["ips"]]


def lease_dir(tmp_path):
    return tmp_path / "ipam" / "net1"


def files(tmp_path):
    return sorted(os.listdir(lease_dir(tmp_path)))


# ---- defaults and order ------------------------------------------------------------------
def test_first_lease_is_dot2_gateway_dot1(tmp_path):
    rc, out = run("ADD", conf(tmp_path, subnet="10.5.0.0/24", routes=[{"dst": "0.0.0.0/0"}]))
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "ips": [{"address": "10.5.0.2/24", "gateway": "10.5.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def test_ipv4_last_is_broadcast_minus_one(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/29")
    got = [add(c, f"c{i}")[0] for i in range(5)]
    assert got == [f"10.5.0.{i}/29" for i in range(2, 7)]
    rc, out = run("ADD", c, "c9")
    assert rc == 1 and out["code"] == 101
    assert out["msg"] == "failed to allocate for range 0: no IP addresses available in range set: 10.5.0.1-10.5.0.6"


def test_ipv6_last_is_all_ones(tmp_path):
    c = conf(tmp_path, subnet="fd00:5::/126")
    assert add(c, "a") == ["fd00:5::2/126"]
    assert add(c, "b") == ["fd00:5::3/126"]
    rc, out = run("ADD", c, "c")
    assert rc == 1 and "no IP addresses available in range set: fd00:5::1-fd00:5::3" in out["msg"]


def test_round_robin_does_not_reuse_a_released_address_at_once(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/29")
    assert add(c, "a") == ["10.5.0.2/29"]
    assert add(c, "b") == ["10.5.0.3/29"]
    assert run("DEL", c, "a")[0] == 0
    assert add(c, "c") == ["10.5.0.4/29"]
    assert (lease_dir(tmp_path) / "last_reserved_ip.0").read_bytes() == b"10.5.0.4"


def test_round_robin_wraps_to_the_start(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/29")
    for i in range(5):
        add(c, f"c{i}")  # .2 .. .6
    assert run("DEL", c, "c1")[0] == 0  # frees .3
    assert add(c, "x") == ["10.5.0.3/29"]


def test_gateway_inside_the_range_is_skipped(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.10", "rangeEnd": "10.5.0.12",
                                 "gateway": "10.5.0.11"}]])
    assert add(c, "a") == ["10.5.0.10/24"]
    assert add(c, "b") == ["10.5.0.12/24"]
    rc, out = run("ADD", c, "c")
    assert rc == 1 and "10.5.0.10-10.5.0.12" in out["msg"]


def test_round_robin_walks_across_the_ranges_of_a_set(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.20", "rangeEnd": "10.5.0.21"},
                                {"subnet": "10.6.0.0/24", "rangeStart": "10.6.0.30", "rangeEnd": "10.6.0.30"}]])
    assert [add(c, f"c{i}")[0] for i in range(3)] == ["10.5.0.20/24", "10.5.0.21/24", "10.6.0.30/24"]
    rc, out = run("ADD", c, "c3")
    assert rc == 1 and "10.5.0.20-10.5.0.21,10.6.0.30-10.6.0.30" in out["msg"]
    assert run("DEL", c, "c0")[0] == 0
    assert add(c, "c4") == ["10.5.0.20/24"]  # wrapped from the last range to the first


def test_result_gateway_is_the_range_gateway_of_the_address(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24", "rangeEnd": "10.5.0.2"},
                                {"subnet": "10.6.0.0/24", "gateway": "10.6.0.254"}]])
    run("ADD", c, "a")
    rc, out = run("ADD", c, "b")
    assert out["ips"] == [{"address": "10.6.0.1/24", "gateway": "10.6.0.254"}]  # .1 is no gateway here


def test_duplicate_allocation_for_the_same_attachment_is_refused(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a", "eth0")
    rc, out = run("ADD", c, "a", "eth0")
    assert rc == 1 and out["code"] == 101
    assert "10.5.0.2 has been allocated to a, duplicate allocation is not allowed" in out["msg"]
    assert add(c, "a", "eth1") == ["10.5.0.3/24"]  # another interface of the same container is fine


# ---- sources of ranges -------------------------------------------------------------------
def test_legacy_range_is_prepended_and_runtime_ip_ranges_before_it(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24", rangeStart="10.5.0.100",
             ranges=[[{"subnet": "fd00:5::/64"}]])
    c["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.7.0.0/24", "rangeStart": "10.7.0.7"}]]}
    rc, out = run("ADD", c)
    assert rc == 0, out
    assert [ip["address"] for ip in out["ips"]] == ["10.7.0.7/24", "10.5.0.100/24", "fd00:5::2/64"]


def test_routes_and_resolv_conf(tmp_path):
    rcf = tmp_path / "resolv.conf"
    rcf.write_text("# comment\n; other\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.test\n"
                   "search a.test b.test\noptions ndots:2 edns0\nbogus\n")
    c = conf(tmp_path, subnet="10.5.0.0/24", resolvConf=str(rcf),
             routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.5.0.254"}])
    rc, out = run("ADD", c)
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.5.0.254"}]
    assert out["dns"] == {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "example.test",
                          "search": ["a.test", "b.test"], "options": ["ndots:2", "edns0"]}


# ---- requested IPs -----------------------------------------------------------------------
@pytest.mark.parametrize("source", ["cni-args", "args", "runtime", "runtime-any-case"])
def test_requested_ip(tmp_path, source):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    args = ""
    if source == "cni-args":
        args = "IgnoreUnknown=1;IP=10.5.0.77"
    elif source == "args":
        c["args"] = {"cni": {"ips": ["10.5.0.77/24"]}}  # a /prefix is ignored
    elif source == "runtime":
        c["runtimeConfig"] = {"ips": ["10.5.0.77"]}
    else:
        c["runtimeConfig"] = {"IPs": ["10.5.0.77"]}
    assert add(c, args=args) == ["10.5.0.77/24"]
    assert (lease_dir(tmp_path) / "10.5.0.77").read_bytes() == b"c1\r\neth0"


def test_requested_ips_dual_stack(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}]])
    c["runtimeConfig"] = {"ips": ["fd00:5::99", "10.5.0.99"]}
    assert add(c) == ["10.5.0.99/24", "fd00:5::99/64"]


@pytest.mark.parametrize("requested,words", [
    ("10.5.0.1", "requested ip 10.5.0.1 is subnet's gateway"),
    ("10.9.0.9", "failed to allocate all requested IPs: 10.9.0.9"),
    ("10.5.0.255", "failed to allocate all requested IPs: 10.5.0.255"),  # broadcast: outside the range
])
def test_unservable_requested_ip_fails_and_leaves_nothing(tmp_path, requested, words):
    c = conf(tmp_path, ranges=[[{"subnet": "fd00:5::/64"}], [{"subnet": "10.5.0.0/24"}]])
    c["args"] = {"cni": {"ips": [requested]}}
    rc, out = run("ADD", c)
    assert rc == 1 and out["code"] == 101 and words in out["msg"], out
    assert not [f for f in files(tmp_path) if f[0].isdigit() or ":" in f]  # the v6 lease was rolled back


def test_requested_ip_already_taken(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a")
    c["runtimeConfig"] = {"ips": ["10.5.0.2"]}
    rc, out = run("ADD", c, "b")
    assert rc == 1 and "requested IP address 10.5.0.2 is not available in range set 10.5.0.1-10.5.0.254" in out["msg"]
    assert (lease_dir(tmp_path) / "10.5.0.2").read_bytes() == b"a\r\neth0"


# ---- dual stack and versions -------------------------------------------------------------
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_dual_stack_result_in_every_version(tmp_path, version):
    c = conf(tmp_path, version, ranges=[[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}]],
             routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    rc, out = run("ADD", c)
    assert rc == 0, out
    assert out["cniVersion"] == version
    assert "interfaces" not in out
    if version in ("0.1.0", "0.2.0"):
        assert out["ip4"] == {"ip": "10.5.0.2/24", "gateway": "10.5.0.1", "routes": [{"dst": "0.0.0.0/0"}]}
        assert out["ip6"] == {"ip": "fd00:5::2/64", "gateway": "fd00:5::1", "routes": [{"dst": "::/0"}]}
    else:
        ips = [{k: v for k, v in ip.items() if k != "version"} for ip in out["ips"]]
        assert ips == [{"address": "10.5.0.2/24", "gateway": "10.5.0.1"},
                       {"address": "fd00:5::2/64", "gateway": "fd00:5::1"}]
        assert all("interface" not in ip for ip in out["ips"])
        if version.startswith("0."):
            assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
        else:
            assert all("version" not in ip for ip in out["ips"])
        assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


# ---- the files ---------------------------------------------------------------------------
def test_exact_bytes_and_modes(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}]])
    old = os.umask(0)
    try:
        add(c, "ctr-1", "net0")
    finally:
        os.umask(old)
    d = lease_dir(tmp_path)
    assert files(tmp_path) == ["10.5.0.2", "fd00:5::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    for name in ("10.5.0.2", "fd00:5::2", "last_reserved_ip.0", "last_reserved_ip.1"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert (d / "10.5.0.2").read_bytes() == b"ctr-1\r\nnet0"
    assert (d / "fd00:5::2").read_bytes() == b"ctr-1\r\nnet0"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.5.0.2"
    assert (d / "last_reserved_ip.1").read_bytes() == b"fd00:5::2"
    assert (d / "lock").read_bytes() == b""


# ---- DEL ---------------------------------------------------------------------------------
def test_del_releases_only_the_attachment_and_is_idempotent(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a", "eth0")
    add(c, "a", "eth1")
    add(c, "b", "eth0")
    assert run("DEL", c, "a", "eth0") == (0, None)
    assert run("DEL", c, "a", "eth0") == (0, None)
    assert files(tmp_path) == ["10.5.0.3", "10.5.0.4", "last_reserved_ip.0", "lock"]


def test_del_releases_a_legacy_lease_holding_only_the_id(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "other")
    (lease_dir(tmp_path) / "10.5.0.9").write_bytes(b"old-ctr")
    assert run("DEL", c, "old-ctr", "eth0") == (0, None)
    assert files(tmp_path) == ["10.5.0.2", "last_reserved_ip.0", "lock"]


def test_del_without_a_lease_dir_creates_nothing(tmp_path):
    assert run("DEL", conf(tmp_path, subnet="10.5.0.0/24")) == (0, None)
    assert not (tmp_path / "ipam").exists()


# ---- CHECK -------------------------------------------------------------------------------
def test_check(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    rc, result = run("ADD", c, "a")
    prev = dict(c, prevResult=result)
    assert run("CHECK", prev, "a") == (0, None)
    rc, out = run("CHECK", prev, "a", "eth9")
    assert rc == 1 and out["code"] == 103 and "failed to find address" in out["msg"]
    rc, out = run("CHECK", prev, "b")
    assert rc == 1 and out["code"] == 103
    wrong = dict(c, prevResult={"cniVersion": "1.1.0", "ips": [{"address": "10.5.0.50/24"}]})
    rc, out = run("CHECK", wrong, "a")
    assert rc == 1 and out["code"] == 103 and "10.5.0.50" in out["msg"]


# ---- GC ----------------------------------------------------------------------------------
def test_gc_releases_what_is_not_valid(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a", "eth0")  # .2 valid
    add(c, "b", "eth0")  # .3 not
    add(c, "a", "eth1")  # .4 not (other ifname)
    (lease_dir(tmp_path) / "10.5.0.9").write_bytes(b"legacy")  # legacy, its id is valid
    (lease_dir(tmp_path) / "10.5.0.10").write_bytes(b"gone")  # legacy, not valid
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"},
                                                  {"containerID": "legacy", "ifname": "eth0"}]})
    assert run("GC", gc) == (0, None)
    assert files(tmp_path) == ["10.5.0.2", "10.5.0.9", "last_reserved_ip.0", "lock"]


def test_gc_accepts_the_legacy_key(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a")
    add(c, "b")
    assert run("GC", dict(c, **{"cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]})) == (0, None)
    assert files(tmp_path) == ["10.5.0.3", "last_reserved_ip.0", "lock"]


def test_gc_without_attachments_removes_nothing(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a")
    assert run("GC", c) == (0, None)
    assert "10.5.0.2" in files(tmp_path)
    assert run("GC", dict(c, **{"cni.dev/valid-attachments": []})) == (0, None)
    assert "10.5.0.2" not in files(tmp_path)


def test_gc_refuses_malformed_attachments(tmp_path):
    c = conf(tmp_path, subnet="10.5.0.0/24")
    add(c, "a")
    rc, out = run("GC", dict(c, **{"cni.dev/valid-attachments": [{"containerID": "a"}]}))
    assert rc == 1 and out["code"] == 7
    assert "10.5.0.2" in files(tmp_path)


def test_gc_and_status_need_version_110(tmp_path):
    c = conf(tmp_path, "1.0.0", subnet="10.5.0.0/24")
    assert run("GC", c)[0] == 1
    assert run("STATUS", c)[0] == 1


# ---- STATUS ------------------------------------------------------------------------------
def test_status_is_50_when_a_range_set_is_exhausted(tmp_path):
    c = conf(tmp_path, ranges=[[{"subnet": "fd00:5::/64"}], [{"subnet": "10.5.0.0/30"}]])
    assert run("STATUS", c) == (0, None)  # nothing allocated yet, nothing created
    assert not (tmp_path / "ipam").exists()
    add(c, "a")  # takes the only v4 address, 10.5.0.2
    rc, out = run("STATUS", c)
    assert rc == 1 and out["code"] == 50 and "10.5.0.1-10.5.0.2" in out["msg"]
    assert run("DEL", c, "a") == (0, None)
    assert run("STATUS", c) == (0, None)
