"""cnm-overlay's state-file restore (hostile review): the helper writes a state file removed by
hand back while an address lease of the node's pods lies in its subnet. Simulated nodes and
throwaway etcd clusters, as in test_overlay_keeper_attack.py."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time

import pytest

from cni_plugins.drivers.overlay import lease, state
from cni_plugins.drivers.overlay.mesh import device_names
from support.common import BIN
from support.etcd import etcd_cluster  # noqa: F401 (fixture)
from support.overlay import World, helper_log, sh, start_helper, wait_for


@pytest.fixture
def world(netns, tmp_path, etcd_cluster):
    w = World(netns, tmp_path, etcd_cluster, ttl=3)
    yield w
    w.cleanup()


def own_key(world, subnet: str) -> bytes:
    return lease.Layout(world.prefix, world.network, ipaddress.ip_network(world.subnet), 24).key(
        ipaddress.ip_network(subnet))


def vxlan_present(node) -> bool:
    _, vx = device_names(node.world.network)
    return sh("ip", "link", "show", vx, ns=node.host, check=False).returncode == 0


def test_a_network_taken_off_as_documented_stays_off_despite_a_dead_adds_address(world):
    """docs/operators.md, 'Taking a node off an overlay network': DEL the pods, remove the
    lease file, `cnmctl gc` removes the VXLAN device. An ADD that died after its IPAM step left
    an address lease on disk (the case `cnmctl gc` exists for: no endpoint record). The helper
    takes that file for a live pod: it writes the removed state file back, keeps the lease alive
    for ever, and re-creates the VXLAN device `cnmctl gc` removed -- the operator cannot take
    the node off the network while the helper runs (its subnet stays held in etcd)."""
    a = world.add_node()
    start_helper(a)
    pod = a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    mine = a.state()["subnet"]
    key = own_key(world, mine)
    client = world.cluster.client()
    # What an ADD that died between its IPAM step and its endpoint record leaves (host-local's
    # format: container id, ifname), for an address of the node's subnet.
    leftover = str(ipaddress.ip_network(mine).network_address + 200)
    with open(os.path.join(state.ipam_dir(a.state_dir), world.network, leftover), "w") as f:
        f.write("deadbeefdeadbeef\r\neth0")
    a.del_pod(pod)
    os.unlink(state.path(a.state_dir, world.network))
    gc = subprocess.run(a.wrap + [os.path.join(BIN, "cnmctl"), "gc"], env=a.env, capture_output=True, text=True,
                        timeout=60)
    time.sleep(3 * world.ttl)
    restored = state.read(a.state_dir, world.network)
    holder = client.get(key)
    assert restored is None and holder is None and not vxlan_present(a), \
        f"node taken off the network as documented, 3 TTLs later: state file {'back' if restored else 'gone'}, " \
        f"{mine} {'still held in etcd' if holder else 'free'}, VXLAN device " \
        f"{'present' if vxlan_present(a) else 'gone'} (cnmctl gc rc={gc.returncode}: {gc.stdout[-400:]}" \
        f"{gc.stderr[-400:]}):\n{helper_log(a)[-1500:]}"


def test_a_network_taken_off_as_documented_is_removed(world):
    """Held: the documented order (DEL the pods, then remove the lease file) with no address
    lease left: the helper does not write the file back and the record lapses in etcd."""
    a = world.add_node()
    start_helper(a)
    pod = a.add_pod()
    wait_for(lambda: "keeping this node's lease" in helper_log(a), what="the helper to serve the network")
    key = own_key(world, a.state()["subnet"])
    client = world.cluster.client()
    a.del_pod(pod)
    os.unlink(state.path(a.state_dir, world.network))
    wait_for(lambda: client.get(key) is None, timeout=6 * world.ttl, what="the record to lapse")
    assert state.read(a.state_dir, world.network) is None, helper_log(a)[-1500:]
