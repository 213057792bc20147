"""Names on a network (issue 14): the config keys and the choice of upstreams, without sockets."""

from __future__ import annotations

import pytest

from cni_plugins.cni.errors import CNIError
from cni_plugins.cni.request import Request
from cni_plugins.drivers.dns import names, server
from cni_plugins.drivers.dns.zone import Records


def request(**conf) -> Request:
    config = {"cniVersion": "1.0.0", "name": "My_Net.1", "type": "cnm-bridge", **conf}
    return Request("ADD", "c1", "/x", "eth0", {}, (), config, b"", {})


def test_names_are_off_by_default_and_change_no_option():
    assert names.options(request()) == {}
    assert names.options(request(dnsEnabled=False)) == {}


def test_default_domain_is_the_network_name_made_a_label():
    assert names.options(request(dnsEnabled=True))["dns"]["domain"] == "my-net-1.cnm"


def test_upstreams_absent_means_the_hosts_and_empty_means_none():
    """Issue 14 item 3: `"dnsUpstreams": []` forwards nowhere; without the key, the host's
    resolvers; never a server of ours."""
    assert names.options(request(dnsEnabled=True))["dns"]["upstreams"] is None
    assert names.options(request(dnsEnabled=True, dnsUpstreams=[]))["dns"]["upstreams"] == []
    assert server.upstreams(Records("d", ()), own=set()) == []
    assert server.upstreams(Records("d", ("10.0.0.53", "10.1.0.1")), own={"10.1.0.1"}) == ["10.0.0.53"]
    hosts = server.host_resolvers()
    assert server.upstreams(Records("d", None), own=set()) == hosts


@pytest.mark.parametrize("name, ok", [("web", True), ("Web-1", True), ("a" * 63, True), ("a" * 64, False),
                                      ("-web", False), ("web-", False), ("we_b", False), ("", False),
                                      ("web.x", False)])
def test_a_name_is_one_dns_label(name, ok):
    assert names.valid_label(name) is ok


def test_requested_names_from_aliases_pod_name_and_cnm_name():
    req = Request("ADD", "c1", "/x", "eth0", {"K8S_POD_NAME": "pod", "CNM_NAME": "Box"}, (),
                  {"name": "Net", "runtimeConfig": {"aliases": {"Net": ["web", "WEB", "bad_name"]}}}, b"", {})
    assert names.requested_names(req) == (["web", "pod", "box"], ["bad_name"])


def test_domain_must_be_a_dns_name():
    with pytest.raises(CNIError) as err:
        names.options(request(dnsEnabled=True, dnsDomain="no spaces"))
    assert err.value.code == 7 and "dnsDomain" in err.value.msg
