"""The helper's lease index (ipam/index.py): after every change another process makes under
the flock, the index gives what a full scan gives; overflow, a moved or replaced directory
make it rescan; at most MAX_DIRS directories are watched."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni_plugins.cli.plugin import handle
from cni_plugins.ipam import disk, index
from cni_plugins.ipam.disk import LeaseDir
from cni_plugins.ipam.leases import ip_of_name, is_lease_name, scan

# Another process changes the directory under the flock, as Go host-local does.
WRITER = textwrap.dedent("""
    import fcntl, json, os, sys
    path, ops = sys.argv[1], json.loads(sys.argv[2])
    lock = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    for op, name, *rest in ops:
        p = os.path.join(path, name)
        if op == "create":
            with open(p, "x") as f:
                f.write(rest[0])
        elif op == "rewrite":
            with open(p, "r+") as f:
                f.write(rest[0]); f.truncate()
        elif op == "delete":
            os.unlink(p)
        elif op == "rename":
            os.rename(p, os.path.join(path, rest[0]))
        elif op == "many":  # create, write and delete rest[0] files: more events than a queue holds
            for i in range(rest[0]):
                q = os.path.join(path, f"{name}{i}")
                with open(q, "w") as f:
                    f.write("x")
                os.unlink(q)
    fcntl.flock(lock, fcntl.LOCK_UN)
""")


def other_process(path, *ops):
    subprocess.run([sys.executable, "-c", WRITER, str(path), json.dumps(ops)], check=True, timeout=120)


@pytest.fixture
def indexed():
    disk.keep_index()
    yield
    disk.keep_index(False)
    index.clear()


def view_of(path) -> tuple[dict, index.DirIndex | None]:
    """(the index's leases under the flock, the index) and, in the same section, a scan to compare."""
    with LeaseDir(str(path.parent), path.name, create=False) as store, store.locked():
        view = store.lease_view()
        owners = dict(view.owners)
        assert owners == scan(store).owners
        by_id = {cid: dict(held) for cid, held in view.by_id.items()}
        assert by_id == scan(store).by_id
        return owners, index.lookup(str(path))


@pytest.fixture
def lease_dir(tmp_path):
    path = tmp_path / "net"
    path.mkdir()
    (path / "10.1.0.2").write_text("a\r\neth0")
    (path / "10.1.0.3").write_text("legacy")
    (path / "last_reserved_ip.0").write_text("10.1.0.3")
    return path


def test_changes_by_another_process_are_seen_with_rereads_only(indexed, lease_dir):
    owners, idx = view_of(lease_dir)
    assert owners == {"10.1.0.2": ("a", "eth0"), "10.1.0.3": ("legacy", None)}
    assert idx is not None and idx.rescans == 1
    other_process(lease_dir, ["create", "10.1.0.4", "b\r\neth1"], ["delete", "10.1.0.2"],
                  ["rewrite", "10.1.0.3", "c\r\neth0"], ["create", "fd00::5", "d\r\neth0"],
                  ["create", "not-a-lease", "e\r\neth0"], ["rename", "10.1.0.4", "10.1.0.9"])
    owners, idx = view_of(lease_dir)
    assert owners == {"10.1.0.9": ("b", "eth1"), "10.1.0.3": ("c", "eth0"), "fd00::5": ("d", "eth0")}
    assert idx.rescans == 1 and idx.rereads >= 5
    other_process(lease_dir, ["rename", "10.1.0.9", "moved-away"], ["delete", "fd00::5"])
    owners, idx = view_of(lease_dir)
    assert owners == {"10.1.0.3": ("c", "eth0")} and idx.rescans == 1


def test_the_index_is_used_by_allocate_and_release(indexed, tmp_path):
    conf = json.dumps({"cniVersion": "1.1.0", "name": "n", "type": "cnm-bridge",
                       "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path), "subnet": "10.6.0.0/29"}}).encode()

    def run(command, cid):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
        response = handle("cnm-ipam", env, conf)
        return response.exit_code, json.loads(response.stdout) if response.stdout.strip() else None

    assert run("ADD", "a")[1]["ips"][0]["address"] == "10.6.0.2/29"
    other_process(tmp_path / "n", ["create", "10.6.0.3", "x\r\neth0"])
    rc, out = run("ADD", "x")  # x got .3 from another process after the index was built
    assert rc == 1 and "10.6.0.3 has been allocated to x, duplicate allocation is not allowed" in out["msg"], out
    assert run("ADD", "b")[1]["ips"][0]["address"] == "10.6.0.4/29"
    other_process(tmp_path / "n", ["delete", "10.6.0.3"])
    assert run("ADD", "x")[1]["ips"][0]["address"] == "10.6.0.5/29"  # round robin goes on
    assert run("DEL", "x") == (0, None) and run("DEL", "b") == (0, None)
    assert sorted(n for n in os.listdir(tmp_path / "n") if is_lease_name(n)) == ["10.6.0.2"]
    idx = index.lookup(str(tmp_path / "n"))
    assert idx is not None and idx.rescans == 1


def test_queue_overflow_rescans(indexed, lease_dir):
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        limit = int(f.read())
    view_of(lease_dir)
    # each file: create + modify + close_write + delete, several events (identical ones merge)
    other_process(lease_dir, ["many", "tmp", limit // 3 + 100], ["create", "10.1.0.7", "z\r\neth0"])
    owners, idx = view_of(lease_dir)
    assert idx.rescans == 2
    assert owners["10.1.0.7"] == ("z", "eth0")


def test_a_directory_moved_away_and_back_rescans(indexed, lease_dir, tmp_path):
    view_of(lease_dir)
    os.rename(lease_dir, tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "10.1.0.8").write_text("m\r\neth0")  # no flock, while it is away
    os.rename(tmp_path / "elsewhere", lease_dir)
    owners, idx = view_of(lease_dir)
    assert idx.rescans == 2 and owners["10.1.0.8"] == ("m", "eth0")


def test_a_replaced_directory_gets_a_fresh_index(indexed, lease_dir, tmp_path):
    _, old = view_of(lease_dir)
    for name in os.listdir(lease_dir):
        os.unlink(lease_dir / name)
    os.rmdir(lease_dir)
    lease_dir.mkdir()  # may get the same inode number back: the old watch saw DELETE_SELF
    (lease_dir / "10.1.0.5").write_text("new\r\neth0")
    owners, idx = view_of(lease_dir)
    assert owners == {"10.1.0.5": ("new", "eth0")}
    assert idx is not old or idx.rescans == 2


def test_at_most_max_dirs_are_watched(indexed, tmp_path, monkeypatch):
    monkeypatch.setattr(index, "MAX_DIRS", 2)
    paths = []
    for i in range(4):
        path = tmp_path / f"n{i}"
        path.mkdir()
        (path / "10.0.0.2").write_text(f"c{i}\r\neth0")
        paths.append(path)
    before = len(os.listdir("/proc/self/fd"))
    indexes = [view_of(path)[1] for path in paths]
    assert [index.lookup(str(p)) is not None for p in paths] == [False, False, True, True]
    assert [i.watch is None for i in indexes] == [True, True, False, False]
    assert len(os.listdir("/proc/self/fd")) == before + 2  # one inotify instance per watched dir
    assert view_of(paths[0])[0] == {"10.0.0.2": ("c0", "eth0")}  # comes back with a rescan
    index.clear()
    assert len(os.listdir("/proc/self/fd")) == before


def test_without_the_index_each_locked_section_scans(lease_dir):
    owners, idx = view_of(lease_dir)
    assert idx is None and owners["10.1.0.2"] == ("a", "eth0")


def test_a_filesystem_without_exact_events_gets_no_index(indexed, lease_dir, monkeypatch):
    monkeypatch.setattr(index.inotify, "LOCAL_FILESYSTEMS", frozenset())
    owners, idx = view_of(lease_dir)
    assert idx is None and owners["10.1.0.2"] == ("a", "eth0")


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.text(alphabet="0123456789.:abcdefABCDEF%x ", max_size=20),
    st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
    st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))),
    st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join),
))
def test_is_lease_name_agrees_with_parsing(name):
    assert is_lease_name(name) == (ip_of_name(name) is not None)
