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
    "gateway-outside": ({"ranges": [[r("10.1.0.0/24", gateway="10.9.0.1")]]}, "ipam.ranges[0][0].gateway",
                        "not in network"),
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


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_config_is_code_7_naming_the_key(tmp_path, name):
    ipam, key, words = INVALID[name]
    rc, out = run("ADD", conf(tmp_path, **ipam))
    assert rc == 1 and out["code"] == 7, out
    assert key in out["msg"], out
    assert words.lower() in out["msg"].lower(), out
    assert not (tmp_path / "ipam").exists() or not any((tmp_path / "ipam").rglob("10.*"))


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
