"""Properties of result conversion (R55, R59): no loss of what both versions can carry,
and every emitted document has only the fields of its version."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugins.cni import versions
from cni_plugins.cni.errors import CNIError
from cni_plugins.cni.result import Result

ALL = versions.SUPPORTED
OLD = ("0.1.0", "0.2.0")

# ---- strategies: results as a plugin of the newest version would print them ----------------

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))


@st.composite
def ip_configs(draw, n_interfaces: int):
    fam = draw(st.sampled_from((4, 6)))
    addr = draw(ipv4 if fam == 4 else ipv6)
    plen = draw(st.integers(0, 32 if fam == 4 else 128))
    entry = {"address": f"{addr}/{plen}"}
    if draw(st.booleans()):
        entry["gateway"] = str(draw(ipv4 if fam == 4 else ipv6))
    if n_interfaces and draw(st.booleans()):
        entry["interface"] = draw(st.integers(0, n_interfaces - 1))
    return entry


@st.composite
def routes(draw):
    fam = draw(st.sampled_from((4, 6)))
    net = ipaddress.ip_network(
        f"{draw(ipv4 if fam == 4 else ipv6)}/{draw(st.integers(0, 32 if fam == 4 else 128))}", strict=False
    )
    route = {"dst": str(net)}
    if draw(st.booleans()):
        route["gw"] = str(draw(ipv4 if fam == 4 else ipv6))
    for key in ("mtu", "advmss", "priority", "table"):
        if draw(st.booleans()):
            route[key] = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        route["scope"] = draw(st.sampled_from((0, 253, 254)))
    return route


names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=15)
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


@st.composite
def interfaces(draw):
    iface = {"name": draw(names)}
    if draw(st.booleans()):
        iface["mac"] = draw(macs)
    if draw(st.booleans()):
        iface["sandbox"] = "/var/run/netns/" + draw(names).replace("/", "_")
    if draw(st.booleans()):
        iface["mtu"] = draw(st.integers(68, 65535))
    if draw(st.booleans()):
        iface["socketPath"] = "/run/" + draw(names)
    if draw(st.booleans()):
        iface["pciID"] = "0000:00:%02x.0" % draw(st.integers(0, 255))
    return iface


words = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
dns = st.fixed_dictionaries(
    {},
    optional={
        "nameservers": st.lists(st.one_of(ipv4, ipv6).map(str), max_size=3),
        "domain": words,
        "search": st.lists(words, max_size=3),
        "options": st.lists(words, max_size=3),
    },
)


@st.composite
def results(draw):
    ifaces = draw(st.lists(interfaces(), max_size=3))
    doc = {"cniVersion": "1.1.0"}
    if ifaces:
        doc["interfaces"] = ifaces
    ips = draw(st.lists(ip_configs(len(ifaces)), max_size=4))
    if ips:
        doc["ips"] = ips
    rts = draw(st.lists(routes(), max_size=4))
    if rts:
        doc["routes"] = rts
    doc["dns"] = draw(dns)
    return Result.parse(doc, "1.1.0")


# ---- what a version can carry ----------------------------------------------------------------


def carried(result: Result, a: str, b: str) -> dict:
    """The part of `result` that both versions a and b can carry (R59)."""
    dns = result.dns.emit()
    if a in OLD or b in OLD:
        out = {"dns": dns}
        for fam in (4, 6):
            first = next((ip for ip in result.ips if ip.family == fam), None)
            if first is None:
                continue
            out[fam] = (
                first.address,
                first.gateway,
                [(r.dst, r.gw) for r in result.routes if r.family == fam],
            )
        return out
    both_11 = a == b == "1.1.0"
    return {
        "dns": dns,
        "ips": [(ip.address, ip.gateway, ip.interface) for ip in result.ips],
        "routes": [r.model_dump() if both_11 else (r.dst, r.gw) for r in result.routes],
        "interfaces": [i.model_dump() if both_11 else (i.name, i.mac, i.sandbox) for i in result.interfaces],
    }


def has_ip(result: Result) -> bool:
    return bool(result.ips)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(results(), st.sampled_from(ALL), st.sampled_from(ALL))
def test_there_and_back_keeps_what_both_versions_carry(result, a, b):
    if (a in OLD or b in OLD) and not has_ip(result):
        return  # covered by test_no_ip_is_an_error_in_old_versions
    in_a = Result.parse(result.emit(a), a)  # the result as a plugin of version a prints it
    back = Result.parse(Result.parse(in_a.emit(b), b).emit(a), a)
    assert carried(back, a, b) == carried(in_a, a, b)
    if a not in OLD and b not in OLD:
        # No loss at all between the rich shapes except the 1.1-only fields.
        assert back.emit(a) == in_a.emit(a) or "1.1.0" in (a, b)


@SETTINGS
@given(results(), st.sampled_from(ALL))
def test_emit_only_has_fields_of_the_version(result, version):
    if version in OLD and not has_ip(result):
        return
    out = result.emit(version)
    assert_valid_for(out, version)


@SETTINGS
@given(results(), st.sampled_from(OLD))
def test_no_ip_is_an_error_in_old_versions(result, version):
    result = result.model_copy(update={"ips": []})
    with pytest.raises(CNIError) as err:
        result.emit(version)
    assert err.value.msg == "cannot convert: no valid IP addresses"


@SETTINGS
@given(results(), st.sampled_from(ALL), st.sampled_from(ALL))
def test_prev_result_of_another_version_is_converted_on_input(result, own, config_version):
    """Result.parse honours the document's own cniVersion, whatever the config's is."""
    if own in OLD and not has_ip(result):
        return
    printed = result.emit(own)
    assert Result.parse(printed, config_version).emit(own) == printed


# ---- the schema of each version (R55 and §1.6) ---------------------------------------------

TOP = {
    "old": {"cniVersion", "ip4", "ip6", "dns"},
    "rich": {"cniVersion", "interfaces", "ips", "routes", "dns"},
}
IFACE = {"name", "mac", "sandbox"}
IFACE_11 = IFACE | {"mtu", "socketPath", "pciID"}
ROUTE = {"dst", "gw"}
ROUTE_11 = ROUTE | {"mtu", "advmss", "priority", "table", "scope"}
DNS_KEYS = {"nameservers", "domain", "search", "options"}


def assert_valid_for(out: dict, version: str) -> None:
    assert out["cniVersion"] == version
    if version in OLD:
        assert set(out) <= TOP["old"]
        assert "ip4" in out or "ip6" in out
        for key, fam in (("ip4", 4), ("ip6", 6)):
            if key in out:
                block = out[key]
                assert set(block) <= {"ip", "gateway", "routes"}
                assert ipaddress.ip_interface(block["ip"]).version == fam
                for route in block.get("routes", []):
                    assert set(route) <= ROUTE
                    assert ipaddress.ip_network(route["dst"]).version == fam
        assert set(out["dns"]) <= DNS_KEYS
        return
    assert set(out) <= TOP["rich"]
    newest = version == "1.1.0"
    for iface in out.get("interfaces", []):
        assert set(iface) <= (IFACE_11 if newest else IFACE) and "name" in iface
    for ip in out.get("ips", []):
        allowed = {"address", "gateway", "interface"}
        if versions.family(version) == "040":
            allowed |= {"version"}
            assert ip["version"] == str(ipaddress.ip_interface(ip["address"]).version)
        assert set(ip) <= allowed
        if "interface" in ip:
            assert 0 <= ip["interface"] < len(out.get("interfaces", []))
    for route in out.get("routes", []):
        assert set(route) <= (ROUTE_11 if newest else ROUTE) and "dst" in route
    if "dns" in out:
        assert set(out["dns"]) <= DNS_KEYS
