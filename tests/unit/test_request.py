"""Env + stdin validation of one invocation (cni-spec.md R8-R24, R57, R78)."""

from __future__ import annotations

import json

import pytest

from cni_plugins.cni import versions
from cni_plugins.cni.errors import CNIError
from cni_plugins.cni.request import MAX_STDIN, parse

CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "cnm-none"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": ""}


def req(env_update=None, conf=None, **conf_update):
    env = dict(ENV, **(env_update or {}))
    config = dict(CONF if conf is None else conf, **conf_update)
    return parse(env, json.dumps(config).encode())


def code_of(env_update=None, conf=None, stdin=None, **conf_update) -> int:
    env = dict(ENV, **(env_update or {}))
    if stdin is None:
        stdin = json.dumps(dict(CONF if conf is None else conf, **conf_update)).encode()
    with pytest.raises(CNIError) as err:
        parse(env, stdin)
    return err.value


def test_a_runtime_request_is_parsed():
    r = req({"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p", "CNI_PATH": "/a::/b"})
    assert (r.command, r.container_id, r.netns, r.ifname, r.network, r.plugin_type, r.version) == (
        "ADD", "c1", "/run/netns/x", "eth0", "net1", "cnm-none", "1.0.0")
    assert r.cni_args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "p"}
    assert r.cni_path == ("/a", "/b")


def test_a_request_is_read_only_and_replace_makes_a_changed_copy():
    r = req()
    with pytest.raises(AttributeError):
        r.command = "DEL"
    d = r.replace(command="DEL", container_id="c2", netns_fd=7)
    assert (d.command, d.container_id, d.netns_fd) == ("DEL", "c2", 7)
    assert (r.command, r.container_id, r.netns_fd) == ("ADD", "c1", None)  # the original is untouched
    assert (d.ifname, d.config, d.env) == (r.ifname, r.config, r.env)
    assert r.replace(netns_fd=3) == r != d  # an open descriptor is not part of the request
    with pytest.raises(TypeError):
        r.replace(no_such_field=1)


# ---- env (R6, R8, R9) ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "add", "FOO", "VERSION "])
def test_unknown_command_is_code_4_naming_it(command):
    err = code_of({"CNI_COMMAND": command})
    assert err.code == 4 and err.msg == f"unknown CNI_COMMAND: {command}"


def test_unset_command_is_code_4():
    env = {k: v for k, v in ENV.items() if k != "CNI_COMMAND"}
    with pytest.raises(CNIError) as err:
        parse(env, json.dumps(CONF).encode())
    assert err.value.code == 4


@pytest.mark.parametrize(
    "command,missing",
    [
        ("ADD", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
        ("CHECK", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
        ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"]),
    ],
)
def test_missing_env_vars_are_code_4_naming_them(command, missing):
    err = code_of({"CNI_COMMAND": command, "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": ""})
    assert err.code == 4
    for var in missing:
        assert var in err.msg
    if command == "DEL":
        assert "CNI_NETNS" not in err.msg  # DEL works without a netns (R34)


def test_del_without_netns_is_fine():
    assert req({"CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_status_need_no_container_env(command):
    r = req({"CNI_COMMAND": command, "CNI_CONTAINERID": "", "CNI_NETNS": "", "CNI_IFNAME": ""}, cniVersion="1.1.0")
    assert r.command == command


@pytest.mark.parametrize("cid", ["c1", "0", "a.b-c_d", "A" * 200, "4f1d0b6e3c2a"])
def test_good_container_ids(cid):
    assert req({"CNI_CONTAINERID": cid}).container_id == cid


@pytest.mark.parametrize("cid", ["-a", ".a", "_a", "a b", "a/b", "a:b", "abc\n", "\nabc", "é", "a\tb", "a;b"])
def test_bad_container_ids_are_code_4(cid):
    err = code_of({"CNI_CONTAINERID": cid})
    assert err.code == 4 and "CNI_CONTAINERID" in err.msg


@pytest.mark.parametrize("ifname", ["eth0", "lo", "a", "x" * 15, "net1.100", "veth-é"[:6], "e_th"])
def test_good_ifnames(ifname):
    assert req({"CNI_IFNAME": ifname}).ifname == ifname


@pytest.mark.parametrize(
    "ifname",
    ["x" * 16, "é" * 8, ".", "..", "a/b", "a:b", "a b", "a\tb", "eth0\n", " ", "a\u00a0b"],
)
def test_bad_ifnames_are_code_4(ifname):
    err = code_of({"CNI_IFNAME": ifname})
    assert err.code == 4 and "CNI_IFNAME" in err.msg


def test_ifname_length_is_in_bytes():
    assert req({"CNI_IFNAME": "é" * 7}).ifname == "é" * 7  # 14 bytes
    assert code_of({"CNI_IFNAME": "é" * 7 + "ab"}).code == 4  # 16 bytes


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_ids_are_validated_for_every_attachment_command(command):
    assert code_of({"CNI_COMMAND": command, "CNI_IFNAME": "a/b"}).code == 4


# ---- config (R12-R24, R57) -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["net1", "cni-loopback", "a.b_c-d", "0"])
def test_good_network_names(name):
    assert req(name=name).network == name


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", "net\n", None, 5, ["x"]])
def test_bad_network_name_is_code_7_naming_the_key(name):
    err = code_of(name=name)
    assert err.code == 7 and "name" in err.details


def test_missing_name_is_code_7():
    err = code_of(conf={"cniVersion": "1.0.0", "type": "cnm-none"})
    assert err.code == 7 and "name" in err.details


@pytest.mark.parametrize("ptype", ["", None, 3])
def test_bad_type_is_code_7(ptype):
    err = code_of(type=ptype)
    assert err.code == 7 and "type" in err.details


@pytest.mark.parametrize("key", ["runtimeConfig", "args", "ipam", "dns", "prevResult"])
def test_well_known_objects_must_be_objects(key):
    err = code_of(**{key: ["not", "an", "object"]})
    assert err.code == 7 and key in err.msg


@pytest.mark.parametrize("version", versions.SUPPORTED)
def test_every_supported_version_is_accepted(version):
    assert req(cniVersion=version).version == version


def test_missing_version_means_010():
    conf = {k: v for k, v in CONF.items() if k != "cniVersion"}
    assert req(conf=conf).version == "0.1.0"
    assert req(cniVersion="").version == "0.1.0"


@pytest.mark.parametrize("version", ["1.0.1", "0.5.0", "2.0.0", "1.0", "v1.0.0", "latest", " 1.0.0"])
def test_unsupported_version_is_code_1(version):
    err = code_of(cniVersion=version)
    assert err.code == 1 and err.msg == "incompatible CNI versions"
    assert f'config is "{version}"' in err.details and "1.1.0" in err.details


@pytest.mark.parametrize("version", [1.0, 1, None, ["1.0.0"], {"v": 1}])
def test_non_string_version_is_a_decode_error(version):
    if version is None:
        assert req(cniVersion=version).version == "0.1.0"  # null is as good as missing
        return
    assert code_of(cniVersion=version).code == 6


def test_unknown_top_level_keys_and_capabilities_are_ignored():
    r = req(
        capabilities={"portMappings": True, "bandwidth": True},
        **{"cni.dev/valid-attachments": [], "somethingElse": {"deep": [1, 2]}, "podman_labels": {"a": "b"},
           "args": {"cni": {"labels": [{"key": "a", "value": "b"}]}}},
    )
    assert r.config["capabilities"] == {"portMappings": True, "bandwidth": True}


def test_runtime_config_keys_match_case_insensitively():
    r = req(runtimeConfig={
        "PortMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}],
        "Bandwidth": {"IngressRate": 2**35, "IngressBurst": 2**32 - 1},
        "dns": {"Servers": ["10.0.0.10"], "Searches": ["svc.cluster.local"]},
    })
    assert r.runtime_config("portMappings") == [{"hostport": 8080, "containerport": 80, "protocol": "tcp", "hostip": ""}]
    assert r.runtime_config("BANDWIDTH")["ingressrate"] == 2**35
    assert r.runtime_config("DNS")["servers"] == ["10.0.0.10"]
    assert r.runtime_config("ips", []) == []


def test_runtime_config_absent_or_null():
    assert req().runtime_config("portMappings") is None
    assert req(runtimeConfig=None).runtime_config("portMappings", 1) == 1


# ---- stdin decoding (R63 codes 5 and 6) -----------------------------------------------------


@pytest.mark.parametrize(
    "stdin",
    [b"{", b"", b"   \n", b"null", b"[]", b"\"x\"", b"42", b"\xff\xfe{}", b"{\"a\": NaN}", b"{\"a\": Infinity}",
     json.dumps(CONF).encode("utf-16"), b"[" * 100000 + b"]" * 100000, b"{\"a\":" * 50000 + b"1" + b"}" * 50000],
)
def test_undecodable_stdin_is_code_6(stdin):
    assert code_of(stdin=stdin).code == 6


def test_oversized_stdin_is_code_5():
    stdin = json.dumps(dict(CONF, pad="x" * MAX_STDIN)).encode()
    err = code_of(stdin=stdin)
    assert err.code == 5 and "too large" in err.msg


def test_utf8_bom_is_not_json():
    assert code_of(stdin=b"\xef\xbb\xbf" + json.dumps(CONF).encode()).code == 6


def test_version_needs_nothing():
    r = parse({"CNI_COMMAND": "VERSION"}, b"")
    assert r.command == "VERSION" and r.config == {}
