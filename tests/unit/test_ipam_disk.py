"""The lease directory: names that cannot leave dataDir, symlinks that are never followed."""

from __future__ import annotations

import json
import os

import pytest

from cni_plugins.cli.plugin import handle
from cni_plugins.ipam.disk import LeaseDir, PathError, lease_dir_path
from cni_plugins.ipam.leases import ip_of_name, parse_owner


def run(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": ifname}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None


def conf(data_dir, name="net1") -> dict:
    return {"cniVersion": "1.1.0", "name": name, "type": "cnm-bridge",
            "ipam": {"type": "cnm-ipam", "dataDir": str(data_dir), "subnet": "10.5.0.0/24"}}


@pytest.mark.parametrize("data_dir,network", [
    ("relative/dir", "net"), ("", "net"), ("/tmp/x\0y", "net"),
    ("/tmp/x", ".."), ("/tmp/x", "."), ("/tmp/x", "a/b"), ("/tmp/x", ""), ("/tmp/x", "../etc"),
])
def test_paths_that_would_leave_data_dir_are_refused(data_dir, network):
    with pytest.raises(PathError):
        lease_dir_path(data_dir, network)


def test_lease_dir_path():
    assert lease_dir_path("/var/lib/cni/networks/", "net-1.a") == "/var/lib/cni/networks/net-1.a"
    assert lease_dir_path("/a/../b", "n") == "/b/n"


def test_names_and_contents():
    assert str(ip_of_name("10.0.0.1")) == "10.0.0.1" and str(ip_of_name("fd00::1")) == "fd00::1"
    for name in ("lock", "last_reserved_ip.0", "cnm-pool.json", "010.0.0.1", "FD00::1", "fd00:0::1", ".10.0.0.1.tmp"):
        assert ip_of_name(name) is None, name
    assert parse_owner("abc\r\neth0") == ("abc", "eth0")
    assert parse_owner("abc\n") == ("abc", None)


def test_a_symlinked_network_dir_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "net1").symlink_to(outside)
    rc, out = run("ADD", conf(data))
    assert rc == 1 and out["code"] == 5, out
    assert os.listdir(outside) == []


def test_a_symlink_named_like_a_lease_is_never_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    lease_dir = tmp_path / "data" / "net1"
    lease_dir.mkdir(parents=True)
    (lease_dir / "10.5.0.2").symlink_to(target)
    rc, out = run("ADD", conf(tmp_path / "data"))
    assert rc == 0 and out["ips"][0]["address"] == "10.5.0.3/24"
    assert target.read_bytes() == b"keep"
    assert run("DEL", conf(tmp_path / "data")) == (0, None)
    assert target.read_bytes() == b"keep"


def test_a_symlinked_last_reserved_file_is_not_written_through(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    lease_dir = tmp_path / "data" / "net1"
    lease_dir.mkdir(parents=True)
    (lease_dir / "last_reserved_ip.0").symlink_to(target)
    rc, out = run("ADD", conf(tmp_path / "data"))
    assert rc == 1 and out["code"] == 5, out
    assert target.read_bytes() == b"keep"
    assert sorted(os.listdir(lease_dir)) == ["last_reserved_ip.0", "lock"]  # the lease was taken back


def test_write_atomic_replaces_whole_files(tmp_path):
    with LeaseDir(str(tmp_path), "n") as store:
        store.write_atomic("x.json", b"one")
        store.write_atomic("x.json", b"two")
        assert store.read("x.json") == b"two"
        assert sorted(store.names()) == ["x.json"]
