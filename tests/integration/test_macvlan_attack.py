"""cnm-macvlan attacked as an operator and a pod author would (issue 15, hostile review):
configs the kernel or the reference plugin refuse, and CHECK after a legitimate change
of the master. Every test asserts on the kernel (links, MACs, MTUs) and on what is left."""

from __future__ import annotations

import json

import pytest

from bridge_support import sh, with_prev
from conftest import GO_PLUGINS
from macvlan_support import MacvlanLab


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    return MacvlanLab(netns, cnm_env, tmp_path)


def assert_refused(lab, run, code: int, word: str, container: str) -> None:
    assert run.rc != 0 and run.json["code"] == code, run
    assert word in run.json["msg"] + run.json.get("details", ""), run
    assert b"Traceback" not in run.stderr
    assert lab.macvlans() == [] and lab.macvlans(container) == []
    assert lab.leases() == [] and lab.endpoints() == []


@pytest.mark.parametrize("mtu", [1, 67])
def test_mtu_below_the_kernel_minimum_is_invalid_config(lab, mtu):
    """Hostile review: an `mtu` below 68 (the least an Ethernet link takes) was sent to the
    kernel, whose EINVAL came back as code 102 "master cannot take another macvlan ... a
    passthru macvlan already": a wrong lead. It is code 7 naming the key; 68 works."""
    c = lab.container()
    assert_refused(lab, lab.run("ADD", lab.conf(mtu=mtu), c), 7, "mtu", c)
    ok = lab.run("ADD", lab.conf(mtu=68), c)
    assert ok.rc == 0, ok
    assert lab.link("eth0", c)["mtu"] == 68
    assert lab.run("DEL", lab.conf(mtu=68), c).rc == 0
    lab.assert_nothing_left(c)


@pytest.mark.parametrize("how", ["mac key", "runtimeConfig", "CNI_ARGS"])
def test_passthru_with_a_requested_mac_behaves_as_the_reference(lab, how):
    """Hostile review: a passthru macvlan takes its master's MAC (the kernel ignores the
    address given at creation). The reference plugin answers the ADD with the master's MAC
    and leaves the master's alone; so do we (refusing would break migrating a config that
    carries a MAC). The result tells the truth: the MAC the kernel has."""
    mac = "02:aa:bb:cc:dd:01"
    keys = {"mac key": {"mac": mac}, "runtimeConfig": {"runtimeConfig": {"mac": mac}}, "CNI_ARGS": {}}[how]
    args = f"IgnoreUnknown=1;MAC={mac}" if how == "CNI_ARGS" else ""
    c, go = lab.container(), lab.container()
    master_mac = lab.link(lab.master)["address"]
    for plugin, netns in (("macvlan", go), ("cnm-macvlan", c)):  # one passthru at a time per master
        conf = lab.conf(mode="passthru", plugin=plugin, ipam={}, **keys)
        run = lab.run("ADD", conf, netns, args=args, **({"directory": GO_PLUGINS} if plugin == "macvlan" else {}))
        assert run.rc == 0, (plugin, run)
        assert run.json["interfaces"][0]["mac"] == master_mac == lab.link("eth0", netns)["address"], (plugin, run)
        assert lab.link(lab.master)["address"] == master_mac
        ok = lab.run("CHECK", with_prev(conf, run.json), netns, args=args,
                     **({"directory": GO_PLUGINS} if plugin == "macvlan" else {}))
        assert ok.rc == 0, (plugin, ok)
        assert lab.run("DEL", conf, netns, args=args, **({"directory": GO_PLUGINS} if plugin == "macvlan" else {})).rc == 0
    assert lab.link(lab.master)["address"] == master_mac
    lab.assert_nothing_left(c, go)


def test_check_passes_after_the_master_mtu_is_raised_or_lowered(lab):
    """Hostile review: with `mtu` unset, CHECK wanted the master's MTU of now; raising the
    master's MTU (the kernel never raises its macvlans' with it) made CHECK of a healthy pod
    fail with 103, where the reference plugin passes. The kernel lowering the macvlan with
    its master passes too; the container changing its own MTU still fails."""
    conf = lab.conf()
    c = lab.container()
    r = lab.add(conf, c)
    prev = with_prev(conf, r)
    sh("ip", "link", "set", lab.master, "mtu", "9000", ns=lab.host)
    assert lab.link("eth0", c)["mtu"] == 1500
    ok = lab.run("CHECK", prev, c)
    assert ok.rc == 0, ok
    sh("ip", "link", "set", lab.master, "mtu", "1400", ns=lab.host)
    assert lab.link("eth0", c)["mtu"] == 1400  # the kernel follows a lower master
    ok = lab.run("CHECK", prev, c)
    assert ok.rc == 0, ok
    sh("ip", "link", "set", "eth0", "mtu", "1300", ns=c)
    bad = lab.run("CHECK", prev, c)
    assert bad.rc != 0 and bad.json["code"] == 103 and "MTU" in bad.json["msg"], bad
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)


def test_mac_with_a_trailing_newline_is_refused(lab):
    """Hostile review: the MAC pattern's `$` let "02:00:00:00:00:01\\n" through to the kernel
    and into the record. It is code 7."""
    c = lab.container()
    r = lab.run("ADD", lab.conf(runtimeConfig={"mac": "02:00:00:00:00:01\n"}), c)
    assert_refused(lab, r, 7, "mac", c)


def _lan_end(lab) -> str:
    return next(n for n in lab.links(lab.lan) if n != "lo")


def _tentative(lab, ns: str, dev: str) -> list[str]:
    out = json.loads(sh("ip", "-6", "-j", "addr", "show", "dev", dev, ns=ns).stdout or "[]")
    return [a["local"] for a in out[0]["addr_info"] if a.get("tentative") or a.get("dadfailed")]


def test_ipv6_address_in_use_on_the_lan_is_refused_not_taken_over(lab):
    """Hostile review: the macvlan's IPv6 addresses went on with DAD off (nodad) and
    ndisc_notify on: a container given an address a LAN host already has answered for it at
    once and announced it (unsolicited NA), taking the live host's traffic. On a LAN, DAD
    runs and the ADD waits for it, as the reference plugin's (ip.SettleAddresses); an
    address in use is refused (nothing left: no link, no lease), the host keeps it; a free
    one is usable (not tentative) when the ADD answers."""
    taken = "fd00:251::2"
    sh("ip", "-6", "addr", "add", f"{taken}/64", "dev", _lan_end(lab), "nodad", ns=lab.lan)
    c = lab.container()
    only = lambda start: lab.ipam({"subnet": "fd00:251::/64", "rangeStart": start, "rangeEnd": start})  # noqa: E731
    r = lab.run("ADD", lab.conf(ipam=only(taken)), c)
    assert_refused(lab, r, 102, taken, c)
    assert taken not in _tentative(lab, lab.lan, _lan_end(lab))  # the LAN host keeps its address
    conf = lab.conf(ipam=only("fd00:251::3"))
    ok = lab.run("ADD", conf, c)
    assert ok.rc == 0, ok
    assert _tentative(lab, c, "eth0") == []
    assert sh("ping", "-6", "-c", "1", "-W", "2", taken, ns=c, check=False).returncode == 0
    assert lab.run("DEL", conf, c).rc == 0
    lab.assert_nothing_left(c)


def test_passthru_container_root_sets_the_masters_mac_until_del(lab):
    """docs/operators.md "macvlan": a passthru container is trusted as the node: a MAC its
    root sets on its interface becomes the master's (the kernel's passthru), and the
    endpoint's DEL puts the master's own back."""
    conf = lab.conf(mode="passthru")
    c = lab.container()
    master_mac = lab.link(lab.master)["address"]
    lab.add(conf, c)
    sh("ip", "link", "set", "eth0", "address", "02:11:22:33:44:55", ns=c)
    assert lab.link(lab.master)["address"] == "02:11:22:33:44:55"
    assert lab.run("DEL", conf, c).rc == 0
    assert lab.link(lab.master)["address"] == master_mac
    lab.assert_nothing_left(c)
