"""Result conversion between spec versions (cni-spec.md §1.6-1.7, R55-R59), by example.

One attachment's data is written out by hand in every version's JSON shape; every
(from, to) pair must convert exactly as R59 says. The property tests live in
test_result_properties.py.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from cni_plugins.cni import versions
from cni_plugins.cni.errors import CNIError
from cni_plugins.cni.result import Result

ALL = versions.SUPPORTED
OLD = ("0.1.0", "0.2.0")  # ip4/ip6 shape
MID = ("0.3.0", "0.3.1", "0.4.0")  # ips with "version"
NEW = ("1.0.0", "1.1.0")  # ips without "version"

DNS = {"nameservers": ["10.1.0.1", "fd00::1"], "domain": "example.test", "search": ["a.example.test"], "options": ["ndots:2"]}

# The richest form: 1.1.0 with every 1.1-only field.
RICH_110 = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
        {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/var/run/netns/x", "mtu": 1400,
         "socketPath": "/run/vhost.sock", "pciID": "0000:00:01.0"},
    ],
    "ips": [
        {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 1},
        {"address": "10.2.0.5/16", "interface": 1},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1},
        {"address": "fd01::5/64", "interface": 1},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "advmss": 1260, "priority": 5, "table": 100, "scope": 0},
        {"dst": "192.168.0.0/16"},
        {"dst": "::/0", "gw": "fd00::1"},
    ],
    "dns": DNS,
}


def _plain_100(version: str) -> dict:
    """RICH_110 without the 1.1-only fields, as a 1.0.0 (or 1.1.0) result."""
    doc = copy.deepcopy(RICH_110)
    doc["cniVersion"] = version
    for iface in doc["interfaces"]:
        for key in ("mtu", "socketPath", "pciID"):
            iface.pop(key, None)
    for route in doc["routes"]:
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            route.pop(key, None)
    return doc


def _with_ip_versions(doc: dict, version: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["cniVersion"] = version
    doc["ips"] = [{"version": "6" if ":" in ip["address"] else "4", **ip} for ip in doc["ips"]]
    return doc


# The same attachment in the 0.1.0/0.2.0 shape: first address per family, routes by family.
def _old(version: str) -> dict:
    return {
        "cniVersion": version,
        "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/16"}]},
        "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": DNS,
    }


# An 0.1.0/0.2.0 result read into a newer version: no interfaces, no indexes, ip4 then ip6.
def _from_old(version: str) -> dict:
    doc = {
        "cniVersion": version,
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}, {"address": "fd00::5/64", "gateway": "fd00::1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/16"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dns": DNS,
    }
    return _with_ip_versions(doc, version) if version in MID else doc


def source_doc(version: str) -> dict:
    """The attachment as a plugin of `version` prints it."""
    if version == "1.1.0":
        return copy.deepcopy(RICH_110)
    if version == "1.0.0":
        return _plain_100(version)
    if version in MID:
        return _with_ip_versions(_plain_100(version), version)
    return _old(version)


def expected(src: str, dst: str) -> dict:
    """What R59 says the `src` document becomes in `dst`."""
    if dst in OLD:
        return _old(dst)
    if src in OLD:
        return _from_old(dst)
    if src == "1.1.0" and dst == "1.1.0":
        return copy.deepcopy(RICH_110)
    if dst in MID:
        return _with_ip_versions(_plain_100(dst), dst)
    return _plain_100(dst)  # 1.1-only fields were never there or are dropped going down


@pytest.mark.parametrize("src,dst", list(itertools.product(ALL, ALL)))
def test_r59_every_version_pair(src, dst):
    result = Result.parse(source_doc(src), src)
    assert result.emit(dst) == expected(src, dst)


@pytest.mark.parametrize("version", ALL)
def test_round_trip_in_own_version_is_identity(version):
    assert Result.parse(source_doc(version), version).emit(version) == source_doc(version)


@pytest.mark.parametrize("src", ALL)
def test_result_own_cni_version_wins_over_the_config_version(src):
    # A prevResult printed by a plugin of another version, parsed under a 1.0.0 config.
    for config_version in ALL:
        assert Result.parse(source_doc(src), config_version).emit("1.0.0") == expected(src, "1.0.0")


@pytest.mark.parametrize("config_version", ALL)
def test_result_without_cni_version_is_read_in_the_config_version(config_version):
    doc = source_doc(config_version)
    del doc["cniVersion"]
    assert Result.parse(doc, config_version).emit(config_version) == source_doc(config_version)


def test_missing_cni_version_with_old_shape_under_new_config_reads_nothing():
    # An ip4/ip6 document claiming (by omission) to be 1.0.0 has no `ips`: nothing to read.
    doc = _old("0.2.0")
    del doc["cniVersion"]
    assert Result.parse(doc, "1.0.0").ips == []


@pytest.mark.parametrize("version", OLD)
def test_no_ip_cannot_be_converted_to_old_versions(version):
    result = Result.parse({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}], "dns": DNS}, "1.0.0")
    with pytest.raises(CNIError) as err:
        result.emit(version)
    assert err.value.msg == "cannot convert: no valid IP addresses"


@pytest.mark.parametrize("version", OLD)
def test_routes_of_a_family_without_address_are_dropped_going_down(version):
    doc = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/24"}],
           "routes": [{"dst": "::/0", "gw": "fd00::1"}, {"dst": "10.0.0.0/8", "gw": "10.9.0.1"}]}
    assert Result.parse(doc, "1.0.0").emit(version) == {
        "cniVersion": version,
        "ip4": {"ip": "10.9.0.2/24", "routes": [{"dst": "10.0.0.0/8", "gw": "10.9.0.1"}]},
        "dns": {},
    }


def test_ipv6_only_goes_down_as_ip6_only():
    doc = {"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "fd00::9/64", "gateway": "fd00::1"}]}
    assert Result.parse(doc, "0.4.0").emit("0.2.0") == {
        "cniVersion": "0.2.0", "ip6": {"ip": "fd00::9/64", "gateway": "fd00::1"}, "dns": {}}


@pytest.mark.parametrize("version", ALL)
def test_empty_dns_printing(version):
    """Issue 12 item 10: an empty DNS is printed as "dns":{} in every version, as the Go
    plugins print it (1.x omitted it, so a result compared field by field with Go's differed)."""
    out = Result.parse({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/8"}]}, "1.0.0").emit(version)
    assert out["dns"] == {}


def test_unknown_fields_on_input_are_ignored():
    doc = _plain_100("1.0.0")
    doc["somethingNew"] = {"x": 1}
    doc["ips"][0]["futureField"] = True
    doc["interfaces"][0]["vendor"] = "x"
    assert Result.parse(doc, "1.0.0").emit("1.0.0") == _plain_100("1.0.0")


def test_version_field_of_ips_is_ignored_on_input_and_not_emitted_in_1x():
    doc = _with_ip_versions(_plain_100("0.4.0"), "0.4.0")
    out = Result.parse(doc, "0.4.0").emit("1.0.0")
    assert all("version" not in ip for ip in out["ips"])


@pytest.mark.parametrize(
    "bad",
    [
        [],
        "x",
        {"cniVersion": "9.9.9", "ips": []},
        {"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]},
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "gateway": "nope"}]},
        {"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]},
        {"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]},
        {"cniVersion": "0.2.0", "ip4": {"gateway": "10.0.0.1"}},
        {"cniVersion": "0.2.0", "ip4": ["10.0.0.1/8"]},
        {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/8"}, "dns": "x"},
        {"cniVersion": "1.0.0", "ips": "10.0.0.1/8"},
    ],
)
def test_invalid_results_are_decode_errors(bad):
    with pytest.raises(CNIError) as err:
        Result.parse(bad, "1.0.0")
    assert err.value.code == 6


def test_addresses_are_normalised_like_go():
    doc = {"cniVersion": "1.0.0", "ips": [{"address": "FD00:0:0:0::5/64", "gateway": "fd00:0::1"}],
           "routes": [{"dst": "10.1.2.3/8"}]}
    out = Result.parse(doc, "1.0.0").emit("1.0.0")
    assert out["ips"] == [{"address": "fd00::5/64", "gateway": "fd00::1"}]
    assert out["routes"] == [{"dst": "10.0.0.0/8"}]  # Go's ParseCIDR masks the host bits too
