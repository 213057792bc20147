"""cnm-ipam beside the reference Go plugins (Debian containernetworking-plugins in /usr/lib/cni):
a live swap with Go host-local on one dataDir in both directions, both at once under the
shared flock, and the Go bridge delegating its IPAM to cnm-ipam in real namespaces."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from support.common import BIN, GO_PLUGINS, unique

VERSION = "1.0.0"  # the newest version Debian's Go plugins (1.1.1) speak


def execute(binary: str, command: str, conf: dict, env: dict, cid: str = "", ifname: str = "eth0",
            netns: str = "/proc/self/ns/net", prefix: list[str] | None = None):
    full = dict(env)
    full.update(CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME=ifname, CNI_ARGS="")
    proc = subprocess.run((prefix or []) + [binary], input=json.dumps(conf).encode(), env=full,
                          capture_output=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


class Swap:
    """One network and dataDir served alternately by Go host-local and cnm-ipam."""

    def __init__(self, env: dict, data_dir, ranges):
        self.env = env
        self.data_dir = data_dir
        self.ranges = ranges
        self.network = unique("swap", 30)

    def conf(self, ipam_type: str) -> dict:
        return {"cniVersion": VERSION, "name": self.network, "type": "bridge",
                "ipam": {"type": ipam_type, "dataDir": str(self.data_dir), "ranges": self.ranges}}

    def run(self, who: str, command: str, cid: str, ifname: str = "eth0"):
        binary = os.path.join(GO_PLUGINS, "host-local") if who == "go" else os.path.join(BIN, "cnm-ipam")
        return execute(binary, command, self.conf("host-local" if who == "go" else "cnm-ipam"), self.env, cid, ifname)

    def add(self, who: str, cid: str, ifname: str = "eth0") -> list[str]:
        rc, out = self.run(who, "ADD", cid, ifname)
        assert rc == 0, (who, out)
        return [ip["address"] for ip in out["ips"]]

    @property
    def dir(self):
        return self.data_dir / self.network

    def files(self) -> list[str]:
        return sorted(os.listdir(self.dir))


@pytest.fixture
def swap(cnm_env, tmp_path):
    return Swap(cnm_env, tmp_path / "ipam", [[{"subnet": "10.233.0.0/29"}], [{"subnet": "fd00:233::/125"}]])


@pytest.mark.parametrize("first,second", [("go", "cnm"), ("cnm", "go")])
def test_live_swap_leases_and_round_robin_are_shared(swap, first, second):
    assert swap.add(first, "a") == ["10.233.0.2/29", "fd00:233::2/125"]
    assert swap.add(second, "b") == ["10.233.0.3/29", "fd00:233::3/125"]  # respects a, continues round robin
    assert (swap.dir / "10.233.0.3").read_bytes() == (swap.dir / "10.233.0.2").read_bytes().replace(b"a", b"b")
    assert (swap.dir / "last_reserved_ip.0").read_bytes() == b"10.233.0.3"
    assert (swap.dir / "last_reserved_ip.1").read_bytes() == b"fd00:233::3"

    # each one finds (CHECK) and releases (DEL) what the other allocated
    assert swap.run(second, "CHECK", "a") == (0, None)
    assert swap.run(first, "CHECK", "b") == (0, None)
    assert swap.run(second, "DEL", "a") == (0, None)
    assert "10.233.0.2" not in swap.files() and "fd00:233::2" not in swap.files()

    # round robin state written by `second` is used by `first`: .2 is free but .4 comes next
    assert swap.add(first, "c") == ["10.233.0.4/29", "fd00:233::4/125"]
    # and the other way round
    assert swap.add(second, "d") == ["10.233.0.5/29", "fd00:233::5/125"]

    # a duplicate attachment is refused by both
    for who in ("go", "cnm"):
        rc, out = swap.run(who, "ADD", "d")
        assert rc != 0 and "duplicate allocation is not allowed" in out["msg"], (who, out)

    # fill the v4 set alternately; both then report exhaustion
    assert swap.add(first, "e")[0] == "10.233.0.6/29"
    assert swap.add(second, "f")[0] == "10.233.0.2/29"  # wrapped
    for who in ("go", "cnm"):
        rc, out = swap.run(who, "ADD", "g")
        assert rc != 0 and "no IP addresses available in range set: 10.233.0.1-10.233.0.6" in out["msg"], (who, out)

    for cid, who in (("b", first), ("c", second), ("d", first), ("e", second), ("f", first)):
        assert swap.run(who, "DEL", cid) == (0, None)
    assert swap.files() == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_go_and_cnm_at_once_share_the_flock(cnm_env, tmp_path):
    net = unique("mix", 30)
    data_dir = tmp_path / "ipam"
    procs = []
    for i in range(40):
        go = i % 2 == 0
        conf = {"cniVersion": VERSION, "name": net, "type": "bridge",
                "ipam": {"type": "host-local" if go else "cnm-ipam", "dataDir": str(data_dir),
                         "subnet": "10.234.0.0/24"}}
        env = dict(cnm_env, CNI_COMMAND="ADD", CNI_CONTAINERID=f"m{i:02d}", CNI_NETNS="/proc/self/ns/net",
                   CNI_IFNAME="eth0", CNI_ARGS="")
        binary = os.path.join(GO_PLUGINS, "host-local") if go else os.path.join(BIN, "cnm-ipam")
        p = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        procs.append((p, json.dumps(conf).encode()))
    addrs = []
    for p, stdin in procs:
        out, err = p.communicate(stdin, timeout=180)
        assert p.returncode == 0, (out, err)
        addrs.append(json.loads(out)["ips"][0]["address"])
    assert len(set(addrs)) == 40
    leases = [f for f in os.listdir(data_dir / net) if f[0].isdigit()]
    assert len(leases) == 40


def test_go_bridge_delegates_to_cnm_ipam_in_real_namespaces(cnm_env, netns, tmp_path):
    host = netns("cnmh")  # the bridge lives in a throwaway "host" netns
    ctr = netns("cnmc")
    bridge = unique("cnmgb")
    data_dir = tmp_path / "ipam"
    network = unique("gobr", 30)
    conf = {"cniVersion": VERSION, "name": network, "type": "bridge", "bridge": bridge, "isGateway": True,
            "ipam": {"type": "cnm-ipam", "dataDir": str(data_dir), "subnet": "10.235.0.0/24",
                     "routes": [{"dst": "0.0.0.0/0"}]}}
    env = dict(cnm_env, CNI_PATH=f"{BIN}:{GO_PLUGINS}")
    in_host = ["nsenter", f"--net={host}", "--"]
    go_bridge = os.path.join(GO_PLUGINS, "bridge")
    try:
        rc, out = execute(go_bridge, "ADD", conf, env, "gbc1", "eth0", ctr, in_host)
        assert rc == 0, out
        ip = next(i for i in out["ips"])
        assert ip["address"] == "10.235.0.2/24" and ip["gateway"] == "10.235.0.1"
        assert out["interfaces"][ip["interface"]]["sandbox"] == ctr
        assert (data_dir / network / "10.235.0.2").read_bytes() == b"gbc1\r\neth0"
        # the kernel: the address in the container, the gateway on the bridge, traffic between them
        addrs = json.loads(subprocess.run(["nsenter", f"--net={ctr}", "ip", "-j", "addr", "show", "eth0"],
                                          capture_output=True, check=True).stdout)
        assert "10.235.0.2" in [a["local"] for a in addrs[0]["addr_info"]]
        brinfo = json.loads(subprocess.run(in_host + ["ip", "-j", "addr", "show", bridge], capture_output=True,
                                           check=True).stdout)
        assert "10.235.0.1" in [a["local"] for a in brinfo[0]["addr_info"]]
        ping = subprocess.run(["nsenter", f"--net={ctr}", "ping", "-c", "2", "-W", "2", "10.235.0.1"],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr

        rc, out = execute(go_bridge, "CHECK", dict(conf, prevResult=out), env, "gbc1", "eth0", ctr, in_host)
        assert rc == 0, out
        rc, out = execute(go_bridge, "DEL", conf, env, "gbc1", "eth0", ctr, in_host)
        assert rc == 0, out
        assert sorted(os.listdir(data_dir / network)) == ["last_reserved_ip.0", "lock"]
    finally:
        subprocess.run(in_host + ["ip", "link", "del", bridge], capture_output=True)
