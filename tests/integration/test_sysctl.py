"""linux.sysctl on the kernel: host knobs read through descriptors kept per netns (right
netns, current value, a kept descriptor whose netns died is replaced), container knobs set
with one lookup of /proc/sys/net. Every case runs in throwaway netns."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from cni_plugins.linux import netns as nsmod
from cni_plugins.linux import sysctl
from support.common import in_netns, unique


@pytest.fixture
def spaces():
    made: list[str] = []

    def make() -> str:
        name = unique("cnmsy")
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return f"/run/netns/{name}"

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def proc(ns: str, key: str, value: str | None = None) -> str:
    path = "/proc/sys/" + key
    if value is None:
        return subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "cat", path],
                              capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sh", "-c", f"echo {value} > {path}"], check=True)
    return value


def plant(slot, pair) -> None:
    """Put `pair` where sysctl keeps net/<dir> of this thread's netns, as if it had kept it."""
    with sysctl._kept_lock:
        old = sysctl._kept_dirs.pop(slot, None)
        sysctl._kept_dirs[slot] = pair
    if old is not None:
        sysctl._close_all(old)


def wait_until_dead(fd: int) -> None:
    """A dead netns is dismantled asynchronously: wait until its sysctl `fd` answers ENOENT."""
    for _ in range(100):
        try:
            os.pread(fd, 10, 0)
        except FileNotFoundError:
            return
        time.sleep(0.1)
    pytest.fail("the dead netns's sysctl stayed readable")


def test_kept_read_follows_the_value_and_the_netns(spaces):
    a, b = spaces(), spaces()
    proc(a, "net/ipv4/ip_forward", "1")
    proc(b, "net/ipv4/ip_forward", "0")
    assert in_netns(a, sysctl.read, "net/ipv4/ip_forward") == "1"
    assert in_netns(b, sysctl.read, "net/ipv4/ip_forward") == "0"
    proc(a, "net/ipv4/ip_forward", "0")  # changed behind our back: the kept descriptor sees it
    assert in_netns(a, sysctl.read, "net/ipv4/ip_forward") == "0"
    in_netns(b, sysctl.ensure, "net/ipv4/ip_forward", "1")
    assert proc(b, "net/ipv4/ip_forward") == "1"
    assert in_netns(a, sysctl.read, "net/ipv4/ip_forward") == "0"


def test_a_kept_descriptor_of_a_dead_netns_is_replaced(spaces):
    """Netns inode numbers are reused: a descriptor kept for a dead netns answers ENOENT and
    is opened afresh in the netns the thread is in (here: planted under the live one's key)."""
    dead, live = spaces(), spaces()
    proc(dead, "net/ipv4/ip_forward", "1")
    proc(live, "net/ipv4/ip_forward", "0")

    def stale_pair() -> tuple[int, int]:
        return (os.open("/proc/sys/net/ipv4", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                os.open("/proc/sys/net/ipv4/ip_forward", os.O_RDONLY | os.O_CLOEXEC))

    pair = in_netns(dead, stale_pair)
    subprocess.run(["ip", "netns", "del", os.path.basename(dead)], check=True)

    def plant_and_read() -> str:
        slot = (nsmod.own_identity(), "ipv4")
        plant(slot, pair)
        value = sysctl.read("net/ipv4/ip_forward")  # raised ENOENT if the stale one stayed
        with sysctl._kept_lock:
            assert os.pread(sysctl._kept_dirs[slot][1], 10, 0).strip() == b"0"
        return value

    wait_until_dead(pair[1])
    assert in_netns(live, plant_and_read) == "0"


def test_write_all_sets_container_knobs_with_one_lookup(spaces):
    ns = spaces()
    subprocess.run(["ip", "-n", os.path.basename(ns), "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
    before = os.stat("/proc/thread-self/ns/net")
    fd = nsmod.open_netns(ns)
    try:
        failed = sysctl.try_write_all([("ipv6/conf/eth0/accept_dad", "0"), ("ipv4/conf/eth0/arp_notify", "1"),
                                       ("ipv4/conf/nosuchlink/arp_notify", "1")], fd)
    finally:
        os.close(fd)
    assert failed == ["ipv4/conf/nosuchlink/arp_notify"]
    assert proc(ns, "net/ipv6/conf/eth0/accept_dad") == "0"
    assert proc(ns, "net/ipv4/conf/eth0/arp_notify") == "1"
    after = os.stat("/proc/thread-self/ns/net")
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # back in our own netns


def test_write_under_a_kept_directory_per_netns(spaces):
    """Host knobs: written through net/ipv6/conf kept per netns; a kept directory of a dead
    netns (its inode number reused) is noticed by its probe and replaced."""
    a, b = spaces(), spaces()
    for ns in (a, b):
        subprocess.run(["ip", "-n", os.path.basename(ns), "link", "add", "vport0", "type", "veth", "peer", "name",
                        "vport1"], check=True)
    assert in_netns(a, sysctl.try_write_under, "ipv6/conf", [("vport0/disable_ipv6", "1")]) == []
    assert proc(a, "net/ipv6/conf/vport0/disable_ipv6") == "1"
    assert proc(b, "net/ipv6/conf/vport0/disable_ipv6") == "0"  # b untouched
    assert in_netns(b, sysctl.try_write_under, "ipv6/conf", [("vport0/disable_ipv6", "1"), ("nope/x", "1")]) \
        == ["nope/x"]
    assert proc(b, "net/ipv6/conf/vport0/disable_ipv6") == "1"

    dead, live = spaces(), spaces()
    for ns in (dead, live):
        subprocess.run(["ip", "-n", os.path.basename(ns), "link", "add", "vport0", "type", "veth", "peer", "name",
                        "vport1"], check=True)

    def open_pair() -> tuple[int, int]:
        conf = os.open("/proc/sys/net/ipv6/conf", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return conf, os.open("/proc/sys/net/ipv4/ip_forward", os.O_RDONLY | os.O_CLOEXEC)

    pair = in_netns(dead, open_pair)
    subprocess.run(["ip", "netns", "del", os.path.basename(dead)], check=True)
    wait_until_dead(pair[1])

    def plant_and_write() -> list[str]:
        plant((nsmod.own_identity(), "ipv6/conf"), pair)
        return sysctl.try_write_under("ipv6/conf", [("vport0/disable_ipv6", "1")])

    assert in_netns(live, plant_and_write) == []
    assert proc(live, "net/ipv6/conf/vport0/disable_ipv6") == "1"


def test_ensure_reads_through_a_kept_descriptor_per_key(spaces):
    """ensure() keeps the key open: it still sees changes made behind its back, and a key of a
    device deleted and made again under the same name is opened afresh (the old descriptor
    answers ENOENT), so the new device gets the value."""
    ns = spaces()
    name = os.path.basename(ns)
    subprocess.run(["ip", "-n", name, "link", "add", "cnmbr0", "type", "bridge"], check=True)
    key = "net/ipv6/conf/cnmbr0/accept_ra"
    in_netns(ns, sysctl.ensure, key, "0")
    assert proc(ns, key) == "0"
    in_netns(ns, sysctl.ensure, "net/ipv4/ip_forward", "1")
    proc(ns, "net/ipv4/ip_forward", "0")  # behind our back
    in_netns(ns, sysctl.ensure, "net/ipv4/ip_forward", "1")
    assert proc(ns, "net/ipv4/ip_forward") == "1"
    subprocess.run(["ip", "-n", name, "link", "del", "cnmbr0"], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "cnmbr0", "type", "bridge"], check=True)
    assert proc(ns, key) != "0"  # a new bridge: the kernel's default
    in_netns(ns, sysctl.ensure, key, "0")
    assert proc(ns, key) == "0"  # (a kept descriptor of the old bridge would have raised)
