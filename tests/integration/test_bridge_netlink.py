"""linux.bridge / linux.veth / linux.links on the kernel: what each call leaves in the kernel
and which rtnetlink requests it sends (an ADD is a handful of them; a steady-state
ensure_bridge is one RTM_GETLINK). Each case runs in a throwaway netns (a thread that
setns()es into it, so sysctls and the pyroute2 sockets are that netns's)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_plugins.linux import bridge, links, veth
from cni_plugins.linux import netns as nsmod
from support.common import in_netns, unique


def ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # `ip netns exec` also mounts that netns's /sys (addr_assign_type is only there)
    return subprocess.run(["ip", "netns", "exec", os.path.basename(ns), *args],
                          capture_output=True, text=True, check=check, timeout=60)


def link(ns: str, name: str) -> dict | None:
    proc = ip(ns, "ip", "-d", "-j", "link", "show", "dev", name, check=False)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def assign_type(ns: str, name: str) -> str:
    """3 (NET_ADDR_SET): the MAC was set, the kernel no longer derives it from the ports."""
    return ip(ns, "cat", f"/sys/class/net/{name}/addr_assign_type").stdout.strip()


def neighbours(ns: str, dev: str) -> str:
    return ip(ns, "ip", "neigh", "show", "dev", dev).stdout


class Counting:
    """An Rtnl that records every request asked of it: its own methods as (name,), pyroute2's
    IPRoute's as ("iproute.<method>", command) (each call is one request here)."""

    OWN = ("get_link", "del_link", "add_veth", "set_link", "add_address", "add_route")

    def __init__(self, rtnl):
        self.rtnl = rtnl
        self.calls: list[tuple] = []

    def fileno(self) -> int:
        return self.rtnl.fileno()

    def __getattr__(self, name):
        if name not in self.OWN:
            raise AttributeError(name)
        method = getattr(self.rtnl, name)

        def call(*args, **kwargs):
            self.calls.append((name,))
            return method(*args, **kwargs)

        return call

    @property
    def iproute(self):
        counting = self

        class CountingIPRoute:
            def __getattr__(self, name):
                method = getattr(counting.rtnl.iproute, name)

                def call(*args, **kwargs):
                    counting.calls.append((f"iproute.{name}", *args[:1]))
                    return method(*args, **kwargs)

                return call

        return CountingIPRoute()


@pytest.fixture
def host(netns):
    return netns("cnmh")


@pytest.fixture
def fresh_pins(monkeypatch):
    """A process that has pinned no bridge yet (as each plugin exec without the helper)."""
    monkeypatch.setattr(bridge, "_pinned", set())
    monkeypatch.setattr(bridge, "_seen", {})


def ensure(ns: str, name: str, **kw):
    def go():
        with links.rtnl() as ipr:
            counting = Counting(ipr)
            br = bridge.ensure_bridge(counting, name, **kw)
            return br["index"], br.get_attr("IFLA_ADDRESS"), counting.calls

    return in_netns(ns, go)


# ---- ensure_bridge --------------------------------------------------------------------------
def vlan_filtering_works(ns: str) -> bool:
    """False on a kernel built without CONFIG_BRIDGE_VLAN_FILTERING."""
    probe = unique("cnv")
    made = ip(ns, "ip", "link", "add", probe, "type", "bridge", "vlan_filtering", "1", check=False).returncode == 0
    ip(ns, "ip", "link", "del", probe, check=False)
    return made


def test_new_bridge_is_created_configured_and_pinned(host, fresh_pins):
    name = unique("cnb")
    index, mac, calls = ensure(host, name, mtu=1400, promisc=True)
    br = link(host, name)
    assert br["ifindex"] == index and br["address"] == mac and br["mtu"] == 1400
    assert "UP" in br["flags"] and "PROMISC" in br["flags"]
    assert br["linkinfo"]["info_kind"] == "bridge" and br["linkinfo"]["info_data"]["vlan_filtering"] == 0
    assert assign_type(host, name) == "3"
    assert ip(host, "cat", f"/proc/sys/net/ipv6/conf/{name}/accept_ra").stdout.strip() == "0"
    # get (missing), add, get, promisc, pin, up, get
    assert calls == [("get_link",), ("iproute.link", "add"), ("get_link",), ("iproute.link", "set"), ("set_link",),
                     ("set_link",), ("get_link",)]


def test_new_bridge_with_vlan_filtering(host, fresh_pins):
    name = unique("cnb")
    if vlan_filtering_works(host):
        ensure(host, name, vlan_filtering=True)
        assert link(host, name)["linkinfo"]["info_data"]["vlan_filtering"] == 1
    else:  # nothing made: the flag is in the creating message
        with pytest.raises(bridge.BridgeError, match="could not add bridge"):
            ensure(host, name, vlan_filtering=True)
        assert link(host, name) is None


def test_steady_state_asks_no_netlink_and_keeps_the_neighbour_table(host, fresh_pins):
    """Setting a link's MAC, even to the same value, flushes its ARP/NDP tables: a bridge
    this process pinned already is only looked at, with ioctls (index, flags, MAC)."""
    name = unique("cnb")
    index, mac, _ = ensure(host, name)
    ip(host, "ip", "addr", "add", "10.251.0.1/24", "dev", name)
    ip(host, "ip", "neigh", "add", "10.251.0.5", "lladdr", "02:00:00:00:00:05", "dev", name, "nud", "permanent")
    again = ensure(host, name)
    assert again == (index, mac, [])
    assert "10.251.0.5" in neighbours(host, name)
    # vlan_filtering shows only in RTM_GETLINK: asked for, the bridge is looked at again
    if vlan_filtering_works(host):
        assert ensure(host, name, vlan_filtering=True)[2][0] == ("get_link",)


def test_a_seen_bridge_replaced_is_looked_at_again(host, fresh_pins):
    """Another MAC set behind our back, or another device under the name: no longer the
    bridge this process verified, so RTM_GETLINK again (and a non-bridge is refused)."""
    name = unique("cnb")
    ensure(host, name)
    ip(host, "ip", "link", "set", name, "address", "02:00:00:00:00:09")
    index, mac, calls = ensure(host, name)
    assert mac == "02:00:00:00:00:09" and calls[0] == ("get_link",)
    assert ensure(host, name)[2] == []
    ip(host, "ip", "link", "del", name)
    ip(host, "ip", "link", "add", name, "type", "veth", "peer", "name", unique("cnp"))
    with pytest.raises(bridge.BridgeError, match="not a bridge"):
        ensure(host, name)


def test_another_process_pins_again(host, fresh_pins):
    """The memory is per process: one with no memory of the bridge sets the MAC (as every
    exec did before), to the same value."""
    name = unique("cnb")
    index, mac, _ = ensure(host, name)
    bridge._pinned.clear()
    again = ensure(host, name)
    assert again[:2] == (index, mac)
    assert again[2] == [("get_link",), ("set_link",)]
    assert assign_type(host, name) == "3"


def test_a_bridge_made_elsewhere_is_configured(host, fresh_pins):
    """Made by another tool: down, MAC not pinned, promisc off. Each setting that differs is
    set, on every ADD (someone may change it back), and nothing else."""
    name = unique("cnb")
    ip(host, "ip", "link", "add", name, "type", "bridge")
    assert assign_type(host, name) != "3"
    _, mac, calls = ensure(host, name, promisc=True)
    br = link(host, name)
    assert "UP" in br["flags"] and "PROMISC" in br["flags"] and br["address"] == mac
    assert assign_type(host, name) == "3"
    # get, promisc, pin, up, get
    assert calls == [("get_link",), ("iproute.link", "set"), ("set_link",), ("set_link",), ("get_link",)]
    ip(host, "ip", "link", "set", name, "promisc", "off")
    ip(host, "ip", "link", "set", name, "down")
    _, _, calls = ensure(host, name, promisc=True)  # pinned already: promisc and up only
    assert calls == [("get_link",), ("iproute.link", "set"), ("set_link",), ("get_link",)]
    br = link(host, name)
    assert "UP" in br["flags"] and "PROMISC" in br["flags"]
    if vlan_filtering_works(host):
        _, _, calls = ensure(host, name, vlan_filtering=True)
        assert calls == [("get_link",), ("iproute.link", "set"), ("get_link",)]
        assert link(host, name)["linkinfo"]["info_data"]["vlan_filtering"] == 1
    else:
        with pytest.raises(bridge.BridgeError, match="could not configure"):
            ensure(host, name, vlan_filtering=True)


def test_a_bridge_deleted_and_made_again_is_pinned_again(host, fresh_pins):
    name = unique("cnb")
    ensure(host, name)
    ip(host, "ip", "link", "del", name)
    ip(host, "ip", "link", "add", name, "type", "bridge")
    assert assign_type(host, name) != "3"
    ensure(host, name)
    assert assign_type(host, name) == "3"


def test_a_link_of_another_kind_is_refused(host, fresh_pins):
    name = unique("cnb")
    ip(host, "ip", "link", "add", name, "type", "veth", "peer", "name", unique("cnp"))
    with pytest.raises(bridge.BridgeError, match="not a bridge"):
        ensure(host, name)


# ---- veth pairs -----------------------------------------------------------------------------
def pair(ns: str, peer_ns: str, host_name: str, peer_name: str, **kw):
    def go():
        fd = nsmod.open_netns(peer_ns)
        try:
            with links.rtnl() as ipr:
                veth.create_pair(ipr, host_name, peer_name, fd, **kw)
        finally:
            os.close(fd)

    return in_netns(ns, go)


def test_pair_made_a_port_of_the_bridge_and_up(host, netns, fresh_pins):
    container = netns("cnmc")
    name = unique("cnb")
    index, _, _ = ensure(host, name)
    pair(host, container, "cnmtest0", "eth0", mtu=1400, peer_mac="02:00:00:00:01:02", master=index, up=True)
    end = link(host, "cnmtest0")
    assert end["master"] == name and "UP" in end["flags"] and end["mtu"] == 1400
    peer = link(container, "eth0")
    assert peer["address"] == "02:00:00:00:01:02" and "UP" not in peer["flags"] and peer["mtu"] == 1400
    pair(host, container, "cnmtest1", "eth1", master=index)  # not up unless asked
    end = link(host, "cnmtest1")
    assert end["master"] == name and "UP" not in end["flags"]


def test_pair_that_cannot_be_enslaved_leaves_nothing(host, netns):
    container = netns("cnmc")
    with pytest.raises(veth.VethError) as err:
        pair(host, container, "cnmtest0", "eth0", master=1, up=True)  # lo takes no ports
    assert not isinstance(err.value, veth.VethExists)
    assert link(host, "cnmtest0") is None and link(container, "eth0") is None


@pytest.mark.parametrize("taken", ["host", "peer"])
def test_pair_with_a_taken_name_is_veth_exists(host, netns, taken):
    container = netns("cnmc")
    if taken == "host":
        ip(host, "ip", "link", "add", "cnmtest0", "type", "veth", "peer", "name", "other0")
    else:
        ip(container, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    with pytest.raises(veth.VethExists):
        pair(host, container, "cnmtest0", "eth0")
    assert link(host if taken == "host" else container, "other0") is not None  # untouched


def test_delete_is_one_dellink_by_name(host, netns):
    container = netns("cnmc")
    pair(host, container, "cnmtest0", "eth0")

    def delete_twice():
        with links.rtnl() as ipr:
            counting = Counting(ipr)
            return veth.delete(counting, "cnmtest0"), veth.delete(counting, "cnmtest0"), counting.calls

    first, second, calls = in_netns(host, delete_twice)
    assert (first, second) == (True, False)
    assert calls == [("del_link",), ("del_link",)]
    assert link(host, "cnmtest0") is None and link(container, "eth0") is None


def test_get_link_is_one_getlink_by_name(host):
    def go():
        with links.rtnl() as ipr:
            counting = Counting(ipr)
            lo, missing = links.get_link(counting, "lo"), links.get_link(counting, "nothere0")
            return lo["index"], lo.get_attr("IFLA_IFNAME"), missing, counting.calls

    assert in_netns(host, go) == (1, "lo", None, [("get_link",), ("get_link",)])
