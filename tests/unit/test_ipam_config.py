"""cnm-ipam config validation: host-local's checks, each a code-7 error naming the key."""

from __future__ import annotations

import json

import pytest

from cni_plugins.cli.plugin import handle


def run(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0", args: str = ""):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": ifname,
           "CNI_ARGS": args}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None


def conf(tmp_path, version="1.0.0", **ipam) -> dict:
    return {"cniVersion": version, "name": "net1", "type": "cnm-bridge",
            "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"), **ipam}}


def r(subnet, **kw):
    return {"subnet": subnet, **kw}


# name -> (ipam keys, key named in the error, words in the message)
INVALID = {
    "host-bits": ({"ranges": [[r("10.1.0.5/24")]]}, "ipam.ranges[0][0].subnet", "host bits"),
    "host-bits-legacy": ({"subnet": "10.1.0.5/24"}, "ipam.subnet", "host bits"),
    "slash31": ({"ranges": [[r("10.1.0.0/31")]]}, "ipam.ranges[0][0].subnet", "too small"),
    "slash32": ({"ranges": [[r("10.1.0.1/32")]]}, "ipam.ranges[0][0].subnet", "too small"),
    "slash127": ({"ranges": [[r("fd00:1::/127")]]}, "ipam.ranges[0][0].subnet", "too small"),
    "slash128": ({"ranges": [[r("fd00:1::1/128")]]}, "ipam.ranges[0][0].subnet", "too small"),
    "not-cidr": ({"ranges": [[r("10.1.0.0")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "garbage-subnet": ({"ranges": [[r("ten/8")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "subnet-not-string": ({"ranges": [[{"subnet": 10}]]}, "ipam.ranges[0][0].subnet", "string"),
    "subnet-missing": ({"ranges": [[{"gateway": "10.1.0.1"}]]}, "ipam.ranges[0][0].subnet", "required"),
    "ranges-not-list": ({"ranges": {"subnet": "10.1.0.0/24"}}, "ipam.ranges", "list"),
    "start-outside": ({"ranges": [[r("10.1.0.0/24", rangeStart="10.2.0.5")]]}, "ipam.ranges[0][0].rangeStart",
                      "not in network"),
    "end-outside": ({"ranges": [[r("10.1.0.0/24", rangeEnd="10.1.1.5")]]}, "ipam.ranges[0][0].rangeEnd",
                    "not in network"),
    "end-before-start": ({"ranges": [[r("10.1.0.0/24", rangeStart="10.1.0.50", rangeEnd="10.1.0.10")]]},
                         "ipam.ranges[0][0].rangeEnd", "before start"),
    "start-other-family": ({"ranges": [[r("10.1.0.0/24", rangeStart="fd00::5")]]}, "ipam.ranges[0][0].rangeStart",
                           "same protocol"),
    "gateway-other-family": ({"ranges": [[r("10.1.0.0/24", gateway="fd00::1")]]}, "ipam.ranges[0][0].gateway",
                             "same protocol"),
    "bad-gateway": ({"ranges": [[r("10.1.0.0/24", gateway="10.1.0.x")]]}, "ipam.ranges[0][0].gateway",
                    "invalid IP"),
    "empty-set": ({"ranges": [[]]}, "ipam.ranges[0]", "empty range set"),
    "mixed-families": ({"ranges": [[r("10.1.0.0/24"), r("fd00:1::/64")]]}, "ipam.ranges[0][1].subnet",
                       "mixed address families"),
    "overlap-in-set": ({"ranges": [[r("10.1.0.0/24"), r("10.1.0.0/25")]]}, "ipam.ranges[0][1]", "overlap"),
    "overlap-between-sets": ({"ranges": [[r("10.1.0.0/24")], [r("10.1.0.0/16")]]}, "ipam.ranges",
                             "range set 0 overlaps with 1"),
    "legacy-overlaps-ranges": ({"subnet": "10.1.0.0/24", "ranges": [[r("10.1.0.0/24")]]}, "ipam.ranges",
                               "range set 0 overlaps with 1"),
    "relative-datadir": ({"dataDir": "var/lib/cni", "subnet": "10.1.0.0/24"}, "ipam.dataDir", "absolute"),
    "datadir-not-string": ({"dataDir": 5, "subnet": "10.1.0.0/24"}, "ipam.dataDir", "string"),
    "route-bad-dst": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "nowhere"}]}, "ipam.routes[0]", "dst"),
    "route-bad-gw": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "ipam.routes[0]",
                     "gw"),
    "pool-bad-base": ({"defaultAddressPools": [{"base": "10.0.0.0/33", "size": 24}]},
                      "ipam.defaultAddressPools[0].base", ""),
    "pool-size-too-big": ({"defaultAddressPools": [{"base": "10.0.0.0/8", "size": 31}]},
                          "ipam.defaultAddressPools[0].size", "between"),
    "pool-size-below-base": ({"defaultAddressPools": [{"base": "10.0.0.0/16", "size": 8}]},
                             "ipam.defaultAddressPools[0].size", "between"),
    "pool-empty": ({"defaultAddressPools": []}, "ipam.defaultAddressPools", "empty"),
    "pool-size-string": ({"defaultAddressPools": [{"base": "10.0.0.0/8", "size": "24"}]},
                         "ipam.defaultAddressPools[0].size", "integer"),
    "resolvconf-missing": ({"subnet": "10.1.0.0/24", "resolvConf": "/nonexistent/resolv.conf"}, "ipam.resolvConf",
                           ""),
}

# Issue 12 items 9 and 10: values read leniently until now (whitespace stripped, an IPv6 zone
# or a netmask taken, a wrong type coerced, an empty value taken for "no value"), each refused
# by Go's host-local too (tests/interop/test_config_interop.py runs them through both).
LENIENT = {
    "subnet-leading-space": ({"ranges": [[r(" 10.1.0.0/24")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "subnet-trailing-newline": ({"ranges": [[r("10.1.0.0/24\n")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "legacy-subnet-leading-space": ({"subnet": " 10.1.0.0/24"}, "ipam.subnet", "CIDR"),
    "legacy-subnet-empty": ({"subnet": ""}, "ipam.subnet", "CIDR"),
    "legacy-subnet-null": ({"subnet": None}, "ipam.subnet", "CIDR"),
    "subnet-zone": ({"ranges": [[r("fe80::%eth0/64")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "subnet-netmask": ({"ranges": [[r("10.1.0.0/255.255.255.0")]]}, "ipam.ranges[0][0].subnet", "CIDR"),
    "start-leading-space": ({"ranges": [[r("10.1.0.0/24", rangeStart=" 10.1.0.5")]]},
                            "ipam.ranges[0][0].rangeStart", "invalid IP"),
    "gateway-trailing-newline": ({"ranges": [[r("10.1.0.0/24", gateway="10.1.0.1\n")]]},
                                 "ipam.ranges[0][0].gateway", "invalid IP"),
    "gateway-zone": ({"ranges": [[r("fd00:1::/64", gateway="fd00:1::1%eth0")]]}, "ipam.ranges[0][0].gateway",
                     "invalid IP"),
    "ranges-empty": ({"ranges": []}, "ipam.ranges", "no IP ranges specified"),
    "route-dst-space": ({"subnet": "10.1.0.0/24", "routes": [{"dst": " 0.0.0.0/0"}]}, "ipam.routes[0].dst", "CIDR"),
    "route-dst-netmask": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "10.9.0.0/255.255.0.0"}]},
                          "ipam.routes[0].dst", "CIDR"),
    "route-gw-space": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1 "}]},
                       "ipam.routes[0].gw", "invalid IP"),
    "route-mtu-string": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "mtu": "1400"}]},
                         "ipam.routes[0].mtu", "integer"),
    "route-priority-bool": ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "priority": True}]},
                            "ipam.routes[0].priority", "integer"),
    "pool-base-netmask": ({"defaultAddressPools": [{"base": "10.0.0.0/255.0.0.0", "size": 24}]},
                          "ipam.defaultAddressPools[0].base", "CIDR"),
    "pool-base-space": ({"defaultAddressPools": [{"base": "10.0.0.0/8 ", "size": 24}]},
                        "ipam.defaultAddressPools[0].base", "CIDR"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_config_is_code_7_naming_the_key(tmp_path, name):
    ipam, key, words = INVALID[name]
    rc, out = run("ADD", conf(tmp_path, **ipam))
    assert rc == 1 and out["code"] == 7, out
    assert key in out["msg"], out
    assert words.lower() in out["msg"].lower(), out
    assert not (tmp_path / "ipam").exists() or not any((tmp_path / "ipam").rglob("10.*"))


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_values_are_code_7_naming_the_key(tmp_path, name):
    """Issue 12 items 9/10: every one of these was accepted (most then allocated an address,
    `ranges: []` and an empty legacy subnet from a default pool)."""
    ipam, key, words = LENIENT[name]
    rc, out = run("ADD", conf(tmp_path, **ipam))
    assert rc == 1 and out["code"] == 7, out
    assert key in out["msg"] and words.lower() in out["msg"].lower(), out
    assert not (tmp_path / "ipam").exists() or not any((tmp_path / "ipam").rglob("*.*.*.*"))


@pytest.mark.parametrize("args", [{"cni": "x"}, {"cni": 5}, {"cni": ["10.1.0.7"]}, {"CNI": "x"}])
def test_args_cni_must_be_an_object(tmp_path, args):
    """Issue 12 item 9: `args: {"cni": "x"}` was accepted (host-local and bridge refuse it)."""
    c = conf(tmp_path, subnet="10.1.0.0/24")
    c["args"] = args
    rc, out = run("ADD", c)
    assert rc == 1 and out["code"] == 7 and "args." in out["msg"], out


@pytest.mark.parametrize("ips", [[" 10.1.0.7"], ["10.1.0.7\n"], ["fd00:1::7%eth0"], ["10.1.0.7/255.255.255.0"]])
def test_requested_ips_are_read_exactly(tmp_path, ips):
    """Issue 12 item 9: a requested IP with surrounding space was stripped and granted."""
    c = conf(tmp_path, ranges=[[r("10.1.0.0/24")], [r("fd00:1::/64")]])
    c["args"] = {"cni": {"ips": ips}}
    rc, out = run("ADD", c)
    assert rc == 1 and out["code"] == 7 and "args.cni.ips[0]" in out["msg"], out


def test_gateway_outside_the_subnet_is_taken_as_host_local_takes_it(tmp_path):
    """Issue 12 item 10: a gateway outside the subnet was refused; host-local takes it (and,
    since it is not in the range, hands out .1 first)."""
    rc, out = run("ADD", conf(tmp_path, ranges=[[r("10.1.0.0/24", gateway="10.9.0.1")]]))
    assert rc == 0, out
    assert out["ips"] == [{"address": "10.1.0.1/24", "gateway": "10.9.0.1"}]


def test_missing_ipam_key(tmp_path):
    rc, out = run("ADD", {"cniVersion": "1.0.0", "name": "net1", "type": "cnm-ipam"})
    assert rc == 1 and out["code"] == 7 and "'ipam'" in out["msg"]


@pytest.mark.parametrize("version,ok", [("0.1.0", False), ("0.2.0", False), ("0.3.0", True), ("1.1.0", True)])
def test_more_than_one_set_per_family_needs_030(tmp_path, version, ok):
    rc, out = run("ADD", conf(tmp_path, version, ranges=[[r("10.1.0.0/24")], [r("10.2.0.0/24")]]))
    if ok:
        assert rc == 0, out
    else:
        assert rc == 1 and out["code"] == 7 and "more than 1 address per family" in out["msg"], out


def test_one_set_per_family_is_fine_for_020(tmp_path):
    rc, out = run("ADD", conf(tmp_path, "0.2.0", ranges=[[r("10.1.0.0/24")], [r("fd00:1::/64")]]))
    assert rc == 0, out
    assert out["ip4"]["ip"] == "10.1.0.2/24" and out["ip6"]["ip"] == "fd00:1::2/64"


@pytest.mark.parametrize("source,args,code", [
    ("cni-args", "IP=10.1.0.x", 4),
    ("args", None, 7),
    ("runtime", None, 7),
])
def test_unreadable_requested_ip(tmp_path, source, args, code):
    c = conf(tmp_path, subnet="10.1.0.0/24")
    if source == "args":
        c["args"] = {"cni": {"ips": ["nonsense"]}}
    elif source == "runtime":
        c["runtimeConfig"] = {"ips": [42]}
    rc, out = run("ADD", c, args=args or "")
    assert rc == 1 and out["code"] == code, out
    assert "ip" in out["msg"].lower()


def test_keys_match_case_insensitively_like_go_json(tmp_path):
    c = conf(tmp_path)
    c["ipam"]["Ranges"] = [[{"Subnet": "10.1.0.0/24", "RANGESTART": "10.1.0.40", "Gateway": "10.1.0.254"}]]
    rc, out = run("ADD", c)
    assert rc == 0, out
    assert out["ips"] == [{"address": "10.1.0.40/24", "gateway": "10.1.0.254"}]


def test_unknown_ipam_keys_are_ignored(tmp_path):
    rc, out = run("ADD", conf(tmp_path, subnet="10.1.0.0/24", somethingElse={"x": 1}))
    assert rc == 0, out


def test_del_with_an_invalid_range_still_releases(tmp_path):
    good = conf(tmp_path, subnet="10.1.0.0/24")
    assert run("ADD", good)[0] == 0
    bad = conf(tmp_path, subnet="10.1.0.5/24")
    rc, out = run("DEL", bad)
    assert rc == 0, out
    assert not (tmp_path / "ipam" / "net1" / "10.1.0.2").exists()


def test_a_validated_config_is_reused_but_never_shared(tmp_path):
    """The helper validates a network's IPAM config once (ipam.config._validated): a later
    request gets an equal config with its own requested IPs, and what one request changes in
    its copy never reaches the next; an invalid config is never remembered."""
    from cni_plugins.cni.request import parse
    from cni_plugins.ipam import config

    def request(c, args=""):
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
               "CNI_ARGS": args}
        return parse(env, json.dumps(c).encode())

    c = conf(tmp_path, ranges=[[r("10.9.0.0/24")]], routes=[{"dst": "0.0.0.0/0"}])
    first = config.load(request(c))
    again = config.load(request(c, "IP=10.9.0.7"))
    assert again.range_sets == first.range_sets and again.routes == first.routes
    assert [str(ip) for ip in again.requested] == ["10.9.0.7"] and first.requested == []
    again.routes[0].dst = "10.0.0.0/8"
    again.range_sets.clear()
    third = config.load(request(c))
    assert third.routes[0].dst == "0.0.0.0/0" and third.range_sets == first.range_sets and third.requested == []
    other = config.load(request(conf(tmp_path, ranges=[[r("10.9.1.0/24")]])))
    assert other.range_sets != first.range_sets  # another config, another key
    bad = conf(tmp_path, ranges=[[r("10.9.2.5/24")]])
    for _ in range(2):
        with pytest.raises(Exception, match="host bits"):
            config.load(request(bad))
