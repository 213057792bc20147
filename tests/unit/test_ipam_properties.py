"""Properties of cnm-ipam's allocator over random ranges and workloads."""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugins.cli.plugin import handle
from cni_plugins.ipam.ranges import make_range


def run(command: str, conf: dict, cid: str, ifname: str = "eth0"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": ifname}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None


@st.composite
def range_sets(draw):
    """One v4 and/or one v6 range set, small prefixes so exhaustion is reachable."""
    sets = []
    if draw(st.booleans()):
        plen = draw(st.integers(26, 30))
        net = ipaddress.ip_network(f"10.{draw(st.integers(0, 255))}.{draw(st.integers(0, 255))}.0/{plen}", strict=False)
        sets.append(_range(draw, net))
    if draw(st.booleans()) or not sets:
        plen = draw(st.integers(122, 126))
        net = ipaddress.ip_network(f"fd00:{draw(st.integers(0, 0xffff)):x}::/{plen}")
        sets.append(_range(draw, net))
    return sets


def _range(draw, net):
    hosts = [net.network_address + i for i in range(net.num_addresses)]
    entry = {"subnet": str(net)}
    if draw(st.booleans()):
        start, end = sorted(draw(st.lists(st.integers(1, len(hosts) - 2), min_size=2, max_size=2)))
        entry["rangeStart"], entry["rangeEnd"] = str(hosts[start]), str(hosts[end])
    if draw(st.booleans()):
        entry["gateway"] = str(hosts[draw(st.integers(1, len(hosts) - 2))])
    return [entry]


def to_range(rangeset_json):
    r = rangeset_json[0]
    return make_range(r["subnet"], r.get("rangeStart"), r.get("rangeEnd"), r.get("gateway"))


def capacity(rangeset_json) -> int:
    return to_range(rangeset_json).size()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sets=range_sets(), n=st.integers(1, 70), release_order=st.randoms())
def test_allocate_n_then_release_all_leaves_only_lock_and_last_reserved(sets, n, release_order):
    with tempfile.TemporaryDirectory() as data_dir:
        conf = {"cniVersion": "1.1.0", "name": "prop", "type": "cnm-bridge",
                "ipam": {"type": "cnm-ipam", "dataDir": data_dir, "ranges": sets}}
        room = min(capacity(s) for s in sets)
        seen: set[str] = set()
        added = []
        for i in range(n):
            rc, out = run("ADD", conf, f"c{i}")
            if i < room:
                assert rc == 0, out
                addrs = [ip["address"] for ip in out["ips"]]
                assert len(addrs) == len(sets)
                for addr, s in zip(addrs, sets):
                    rng = to_range(s)
                    ip = ipaddress.ip_interface(addr).ip
                    assert rng.contains(ip) and ip != rng.gateway
                    assert addr not in seen
                    seen.add(addr)
                added.append(f"c{i}")
            else:  # exhausted: a clean error and nothing half-allocated
                assert rc == 1 and out["code"] == 101 and "no IP addresses available" in out["msg"], out
        lease_dir = os.path.join(data_dir, "prop")
        leases = [f for f in os.listdir(lease_dir) if f != "lock" and not f.startswith("last_reserved_ip.")]
        assert len(leases) == len(added) * len(sets)
        release_order.shuffle(added)
        for cid in added:
            assert run("DEL", conf, cid) == (0, None)
        left = set(os.listdir(lease_dir))
        assert "lock" in left
        assert left <= {"lock"} | {f"last_reserved_ip.{i}" for i in range(len(sets))}
