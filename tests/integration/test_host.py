"""cnm-host (Docker's --net=host), executed as a runtime does, in every spec version
(issue 2 item 6).

Most tests run the plugin inside a throwaway netns H (`ip netns exec H bin/cnm-host`), so
"the host" is a stack this test built and fully knows: veth links, global and link-scope
addresses, default routes. One test runs against the real host and only reads it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from pyroute2 import IPRoute

from support.bridge import store_rows
from support.common import pin_names, ALL_VERSIONS, BIN, unique

OLD = ("0.1.0", "0.2.0")
ARPHRD_LOOPBACK = 772


def conf(version="1.1.0", **extra):
    return {"cniVersion": version, "name": unique("hostnet", 30), "type": "cnm-host", **extra}


def run_in(host_ns: str | None, command: str, config, env: dict, *, netns: str, container_id: str = "c1",
           ifname: str = "eth0") -> tuple[int, dict | None, bytes]:
    """Execute bin/cnm-host with `host_ns` as its own netns (None: the real host)."""
    full = dict(env, CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname,
                CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=p")
    argv = [os.path.join(BIN, "cnm-host")]
    if host_ns is not None:
        argv = ["ip", "netns", "exec", os.path.basename(host_ns)] + argv
    proc = subprocess.run(argv, input=json.dumps(config).encode(), env=full, capture_output=True, timeout=60)
    assert b"Traceback" not in proc.stderr
    return proc.returncode, (json.loads(proc.stdout) if proc.stdout.strip() else None), proc.stderr


def snapshot(host_ns: str | None) -> dict:
    """Everything cnm-host could have touched, read with pyroute2."""
    kw = {"netns": os.path.basename(host_ns)} if host_ns else {}
    with IPRoute(**kw) as ipr:
        links = sorted(
            (l["index"], l.get("ifname"), l.get("address"), l["flags"], l.get("mtu"), l["ifi_type"])
            for l in ipr.get_links()
        )
        addrs = sorted((a["index"], a.get("address"), a["prefixlen"], a["scope"]) for a in ipr.get_addr())
        routes = sorted(
            (r["family"], r["dst_len"], str(r.get("dst")), str(r.get("gateway")), r.get("oif") or 0)
            for r in ipr.get_routes(table=254)
        )
    return {"links": links, "addrs": addrs, "routes": routes}


def expected_view(snap: dict) -> dict:
    """What the result must report: non-loopback links, their global addresses, default routes."""
    names = {idx: name for idx, name, _, _, _, kind in snap["links"] if kind != ARPHRD_LOOPBACK}
    return {
        "interfaces": sorted((name, mac) for idx, name, mac, _, _, kind in snap["links"] if kind != ARPHRD_LOOPBACK),
        "ips": sorted((names[idx], f"{addr}/{plen}") for idx, addr, plen, scope in snap["addrs"]
                      if scope == 0 and idx in names),
        "routes": sorted(("::/0" if fam == socket.AF_INET6 else "0.0.0.0/0", gw)
                         for fam, dst_len, _, gw, _ in snap["routes"] if dst_len == 0 and gw != "None"),
    }


def result_view(result: dict, netns: str) -> dict:
    assert all(i["sandbox"] == netns for i in result["interfaces"])
    names = [i["name"] for i in result["interfaces"]]
    return {
        "interfaces": sorted((i["name"], i["mac"]) for i in result["interfaces"]),
        "ips": sorted((names[ip["interface"]], ip["address"]) for ip in result.get("ips", [])),
        "routes": sorted((r["dst"], r["gw"]) for r in result.get("routes", [])),
    }


@pytest.fixture
def fake_host(netns):
    """A netns playing the host: two veth links with global + link-local addresses, default routes."""
    path = netns("cnmfhost")
    name = os.path.basename(path)
    a, b = unique("cnmha", 15), unique("cnmhb", 15)

    def ip(*args):
        subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)

    ip("link", "add", a, "type", "veth", "peer", "name", b)
    ip("link", "set", a, "up")
    ip("link", "set", b, "up")
    ip("link", "set", "lo", "up")
    ip("addr", "add", "10.77.0.2/24", "dev", a)
    ip("addr", "add", "10.77.1.2/24", "dev", a)
    ip("addr", "add", "fd00:77::2/64", "dev", a, "nodad")
    ip("addr", "add", "10.78.0.2/24", "dev", b)
    ip("addr", "add", "169.254.9.9/16", "dev", b, "scope", "link")
    ip("route", "add", "default", "via", "10.77.0.1")
    ip("-6", "route", "add", "default", "via", "fd00:77::1")
    return path


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_check_del_in_every_version(version, fake_host, cnm_env):
    before = snapshot(fake_host)
    config = conf(version)
    rc, result, stderr = run_in(fake_host, "ADD", config, cnm_env, netns=fake_host)
    assert rc == 0, (result, stderr)
    assert result["cniVersion"] == version
    want = expected_view(before)
    if version in OLD:
        assert set(result) == {"cniVersion", "ip4", "ip6", "dns"}
        first_v4 = [ip for _, ip in sorted(want["ips"]) if ":" not in ip]
        assert result["ip4"]["ip"] in first_v4 and result["ip6"]["ip"] == "fd00:77::2/64"
        assert result["ip4"]["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]
        assert result["ip6"]["routes"] == [{"dst": "::/0", "gw": "fd00:77::1"}]
    else:
        assert result_view(result, fake_host) == want
        assert ("169.254.9.9/16" not in json.dumps(result)) and ("fe80" not in json.dumps(result))
        assert all(("version" in ip) == (version < "1.0.0") for ip in result["ips"])
    assert [r[0] for r in store_rows(cnm_env, "sandboxes")] == ["host"]

    if version >= "0.4.0":
        rc, out, _ = run_in(fake_host, "CHECK", dict(config, prevResult=result), cnm_env, netns=fake_host)
        assert (rc, out) == (0, None), out
    rc, out, _ = run_in(fake_host, "DEL", config, cnm_env, netns=fake_host)
    assert (rc, out) == (0, None), out
    assert snapshot(fake_host) == before  # ADD, CHECK and DEL changed nothing
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []
    rc, out, _ = run_in(fake_host, "DEL", config, cnm_env, netns=fake_host)
    assert (rc, out) == (0, None)


@pytest.mark.parametrize("path", ["/proc/self/ns/net", "/proc/thread-self/ns/net", "bind"])
def test_host_is_recognised_by_identity_not_path(path, fake_host, cnm_env, tmp_path):
    if path == "bind":
        path = str(tmp_path / "some-pod-netns")
        open(path, "w").close()
        subprocess.run(["mount", "--bind", fake_host, path], check=True)
    try:
        config = conf("1.0.0")
        rc, result, _ = run_in(fake_host, "ADD", config, cnm_env, netns=path)
        assert rc == 0, result
        assert {i["sandbox"] for i in result["interfaces"]} == {path}
        assert run_in(fake_host, "CHECK", config, cnm_env, netns=path)[0] == 0
        assert run_in(fake_host, "CHECK", config, cnm_env, netns=fake_host)[0] == 0  # same ns, other path
        assert run_in(fake_host, "DEL", config, cnm_env, netns=path)[0] == 0
    finally:
        if path.startswith(str(tmp_path)):
            subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_any_other_netns_is_refused_naming_it(version, fake_host, netns, cnm_env):
    other = netns("cnmpod")
    before, before_other = snapshot(fake_host), snapshot(other)
    real_host = f"/proc/{os.getpid()}/ns/net"  # the machine's netns: not the plugin's own here
    for path in (other, real_host):
        rc, err, _ = run_in(fake_host, "ADD", conf(version), cnm_env, netns=path)
        assert rc != 0 and err["code"] == 8, err
        assert err["cniVersion"] == version and path in err["details"]
    assert snapshot(fake_host) == before and snapshot(other) == before_other
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []
    assert pin_names(cnm_env) == []


def test_missing_netns_is_code_8(fake_host, cnm_env):
    rc, err, _ = run_in(fake_host, "ADD", conf(), cnm_env, netns="/run/netns/cnm-does-not-exist")
    assert rc != 0 and err["code"] == 8


def test_check_fails_for_another_netns(fake_host, netns, cnm_env):
    config = conf("1.0.0")
    rc, result, _ = run_in(fake_host, "ADD", config, cnm_env, netns=fake_host)
    assert rc == 0
    rc, err, _ = run_in(fake_host, "CHECK", dict(config, prevResult=result), cnm_env, netns=netns("cnmpod"))
    assert rc != 0 and err["code"] in (8, 103), err
    assert run_in(fake_host, "DEL", config, cnm_env, netns=fake_host)[0] == 0


def test_several_containers_share_the_host_sandbox(fake_host, cnm_env):
    config = conf("1.0.0")
    for cid in ("c1", "c2"):
        assert run_in(fake_host, "ADD", config, cnm_env, netns=fake_host, container_id=cid)[0] == 0
    assert [r[0] for r in store_rows(cnm_env, "sandboxes")] == ["host"]
    assert len(store_rows(cnm_env, "endpoints")) == 2
    assert run_in(fake_host, "DEL", config, cnm_env, netns="", container_id="c1")[0] == 0
    assert [r[0] for r in store_rows(cnm_env, "sandboxes")] == ["host"]
    assert run_in(fake_host, "DEL", config, cnm_env, netns=fake_host, container_id="c2")[0] == 0
    assert store_rows(cnm_env, "sandboxes") == [] and store_rows(cnm_env, "endpoints") == []


def test_del_with_empty_or_gone_netns(fake_host, cnm_env):
    config = conf("1.0.0")
    assert run_in(fake_host, "ADD", config, cnm_env, netns=fake_host)[0] == 0
    assert run_in(fake_host, "DEL", config, cnm_env, netns="/run/netns/cnm-gone")[0] == 0
    assert store_rows(cnm_env, "endpoints") == []
    assert run_in(fake_host, "DEL", config, cnm_env, netns="")[0] == 0


def test_the_real_host_read_only(cnm_env):
    """Against the machine's own netns, through another path to it: reports it, changes nothing."""
    path = f"/proc/{os.getpid()}/ns/net"
    before = snapshot(None)
    config = conf("1.0.0")
    rc, result, stderr = run_in(None, "ADD", config, cnm_env, netns=path)
    assert rc == 0, (result, stderr)
    view, want = result_view(result, path), expected_view(before)
    # Other engineers' tests may add or remove links meanwhile: compare what existed throughout.
    still = {name for _, name, *_ in snapshot(None)["links"]}
    assert {i for i in want["interfaces"] if i[0] in still} <= set(view["interfaces"])
    assert {ip for ip in want["ips"] if ip[0] in still} <= set(view["ips"])
    assert view["routes"] == want["routes"]
    assert run_in(None, "CHECK", dict(config, prevResult=result), cnm_env, netns="/proc/self/ns/net")[0] == 0
    assert run_in(None, "DEL", config, cnm_env, netns=path)[0] == 0
    after = snapshot(None)
    both = {l[0] for l in before["links"]} & {l[0] for l in after["links"]}
    assert [l for l in before["links"] if l[0] in both] == [l for l in after["links"] if l[0] in both]
    assert [a for a in before["addrs"] if a[0] in both] == [a for a in after["addrs"] if a[0] in both]
    assert [r for r in before["routes"] if r[1] == 0] == [r for r in after["routes"] if r[1] == 0]
    assert store_rows(cnm_env, "sandboxes") == []


def test_conf_host_conflist_through_cnmctl(fake_host, cnm_env, tmp_path):
    """conf/host.conflist run as cnitool does (cnmctl add/check/del) from inside the fake host."""
    before = snapshot(fake_host)
    env = dict(cnm_env, NETCONFPATH=os.path.join(os.path.dirname(BIN), "conf"), CNI_PATH=BIN,
               CNI_CACHE_DIR=str(tmp_path / "cache"), CNI_IFNAME="eth0")

    def cnmctl(*args):
        return subprocess.run(["ip", "netns", "exec", os.path.basename(fake_host), os.path.join(BIN, "cnmctl"), *args],
                              env=env, capture_output=True, timeout=60)

    add = cnmctl("add", "host", "/proc/self/ns/net")
    assert add.returncode == 0, add
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.1.0"
    assert result_view(result, "/proc/self/ns/net") == expected_view(before)
    assert cnmctl("check", "host", "/proc/self/ns/net").returncode == 0
    assert cnmctl("del", "host", "/proc/self/ns/net").returncode == 0
    assert snapshot(fake_host) == before
    assert store_rows(cnm_env, "sandboxes") == []
