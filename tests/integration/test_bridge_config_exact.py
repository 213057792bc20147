"""cnm-bridge reads every typed key exactly (issue 12 items 9 and 10): no value is stripped,
coerced or taken for "unset" when it is of the wrong type, and each refusal is a code-7
error naming the key that changes nothing, in a throwaway host netns as every bridge test.

Before, each of these ADDs succeeded (or, for an IPv6 zone in hostIP, failed with code 100
from an nft syntax error after the veth and addresses were made and unwound)."""

from __future__ import annotations

import pytest

from support.bridge import Lab


@pytest.fixture(params=["host-local", "cnm-ipam"])
def lab(request, netns, cnm_env, tmp_path):
    return Lab(netns, cnm_env, tmp_path, ipam_type=request.param)


def ports_conf(lab: Lab, mappings, **keys) -> dict:
    conf = lab.conf(ipam=lab.ipam("10.250.0.0/24", "fd00:250::/64"), capabilities={"portMappings": True}, **keys)
    conf["runtimeConfig"] = {"portMappings": mappings}
    return conf


def assert_refused(lab: Lab, conf: dict, named: str) -> None:
    ns = lab.container()
    run = lab.run("ADD", conf, ns)
    assert run.rc == 1 and run.json["code"] == 7, run
    assert named in run.json["msg"] + " " + run.json["details"], run
    assert b"Traceback" not in run.stderr
    assert lab.link("eth0", ns) is None and lab.link(lab.bridge) is None
    lab.assert_nothing_left()


MAPPING = {"hostPort": 8080, "containerPort": 80}


@pytest.mark.parametrize("host_ip, why", [
    ("::ffff:192.0.2.1", "IPv4-mapped"),  # an IPv6 binding no IPv4 packet matches
    ("::FFFF:192.0.2.1", "IPv4-mapped"),
    ("fe80::1%eth0", "zone"),  # was code 100: nft's syntax error
    ("fd00:250::1%1", "zone"),
    (" 192.0.2.1", "not an IP address"),
    ("192.0.2.1\n", "not an IP address"),
    (0, "must be a string"),  # was taken for "no hostIP"
    (False, "must be a string"),
    ([], "must be a string"),
])
def test_host_ip_is_read_exactly(lab, host_ip, why):
    """Issue 12 item 9: hostIP ::ffff:1.2.3.4 was accepted, fe80::1%eth0 was code 100."""
    conf = ports_conf(lab, [dict(MAPPING, hostIP=host_ip)])
    assert_refused(lab, conf, "hostIP")
    assert why in lab.run("ADD", conf, lab.container()).json["details"]


@pytest.mark.parametrize("binding", ["::ffff:192.0.2.1", "fe80::1%eth0", " 192.0.2.1"])
def test_host_binding_ip_is_read_exactly(lab, binding):
    """Issue 12 item 9: the network's default host address, the same rules as hostIP."""
    assert_refused(lab, ports_conf(lab, [MAPPING], hostBindingIP=binding), "hostBindingIP")


@pytest.mark.parametrize("protocol", [0, False, ["tcp"], {"tcp": 1}])
def test_protocol_of_a_wrong_type_is_refused(lab, protocol):
    """Issue 12 item 9: a falsy protocol of another type (0, false) was taken for "tcp"."""
    assert_refused(lab, ports_conf(lab, [dict(MAPPING, protocol=protocol)]), "protocol")


@pytest.mark.parametrize("args", [{"cni": "x"}, {"cni": 1}, {"CNI": ["x"]}])
def test_args_cni_must_be_an_object(lab, args):
    """Issue 12 item 9: `args: {"cni": "x"}` was accepted (the Go bridge and host-local refuse it).
    Our DEL still goes through: it must converge whatever an older version accepted (Go
    host-local's own DEL refuses it)."""
    assert_refused(lab, lab.conf(args=args), "args.")
    if lab.ipam_type == "cnm-ipam":
        assert lab.run("DEL", lab.conf(args=args), lab.container()).rc == 0
