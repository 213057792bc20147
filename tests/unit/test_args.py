"""CNI_ARGS with Go's LoadArgs semantics (cni-spec.md R11, §3.3)."""

from __future__ import annotations

import pytest

from cni_plugins.cni.args import parse_cni_args, truthy
from cni_plugins.cni.errors import CNIError

CONTAINERD = (
    "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=0123abcd;"
    "K8S_POD_UID=9a8b7c;IgnoreUnknown=1"
)


def test_empty_is_no_args():
    assert parse_cni_args("") == {}


def test_what_containerd_sends_in_any_order():
    expected = {
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": "0123abcd",
        "K8S_POD_UID": "9a8b7c",
        "IgnoreUnknown": "1",
    }
    assert parse_cni_args(CONTAINERD) == expected
    assert parse_cni_args(";".join(reversed(CONTAINERD.split(";")))) == expected


def test_podman_and_crio_keys_are_known():
    assert parse_cni_args("IP=10.88.0.5;MAC=c2:11:22:33:44:55;K8S_POD_NAME=c1") == {
        "IP": "10.88.0.5", "MAC": "c2:11:22:33:44:55", "K8S_POD_NAME": "c1"}


def test_unknown_key_fails_naming_it():
    with pytest.raises(CNIError) as err:
        parse_cni_args("FOO=bar;K8S_POD_NAME=x")
    assert err.value.code == 4
    assert "FOO" in err.value.details


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "True", " 1 "])
def test_ignore_unknown_truthy_lets_unknown_keys_through(flag):
    assert parse_cni_args(f"FOO=bar;IgnoreUnknown={flag}") == {"FOO": "bar", "IgnoreUnknown": flag}


@pytest.mark.parametrize("flag", ["0", "false", "yes", ""])
def test_ignore_unknown_falsy_keeps_unknown_keys_an_error(flag):
    with pytest.raises(CNIError):
        parse_cni_args(f"FOO=bar;IgnoreUnknown={flag}")


def test_keys_are_case_sensitive_like_go_field_names():
    with pytest.raises(CNIError):  # `ip` is not host-local's `IP` (cni-spec.md §0.10)
        parse_cni_args("ip=10.0.0.5")
    with pytest.raises(CNIError):  # nor is `ignoreunknown` the IgnoreUnknown flag
        parse_cni_args("FOO=1;ignoreunknown=1")


@pytest.mark.parametrize("raw", ["IP", "IP=1=2", "IgnoreUnknown=1;A=b=c", "=;"])
def test_a_pair_that_is_not_key_value_fails_even_with_ignore_unknown(raw):
    with pytest.raises(CNIError) as err:
        parse_cni_args(raw)
    assert err.value.code == 4


def test_empty_items_are_skipped():
    assert parse_cni_args("IP=10.0.0.5;;") == {"IP": "10.0.0.5"}


def test_lenient_mode_for_del_skips_bad_pairs_and_unknown_keys():
    assert parse_cni_args("IP=1=2;FOO=bar;MAC=x", strict=False) == {"FOO": "bar", "MAC": "x"}


def test_empty_value_is_allowed():
    assert parse_cni_args("K8S_POD_NAME=") == {"K8S_POD_NAME": ""}


def test_truthy():
    assert truthy("1") and truthy("true") and truthy("TrUe")
    assert not truthy("0") and not truthy("") and not truthy("yes")
