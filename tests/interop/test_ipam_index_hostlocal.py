"""Go host-local and cnm-ipam served by a real resident helper (cnmd, whose lease index is
kept by inotify) share one lease directory: every lease Go adds, releases, or that appears
or goes by hand between two helper requests is seen by the next one, with host-local's rules.

Which path served each cnm-ipam exec is checked from outside (`-X importtime`: an in-process
command imports cni_plugins.cli.plugin), and so is the helper's inotify watch on the directory
(/proc/<pid>/fdinfo of its descriptors)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess

import pytest

from support.common import BIN, GO_PLUGINS, unique, wait_listening

PYTHON = "/usr/bin/python3"  # bin/cnm's shebang interpreter
VERSION = "1.0.0"  # the newest version Debian's Go plugins speak


@pytest.fixture(scope="module")
def cnmd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cnmd-index")
    sock = str(directory / "cnmd.sock")
    log = open(directory / "cnmd.log", "wb")
    proc = subprocess.Popen([os.path.join(BIN, "cnmd"), "--socket", sock], stdout=log, stderr=log)
    wait_listening(sock, proc, log=directory / "cnmd.log")
    yield proc, sock
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    log.close()


class Shared:
    """One network whose dataDir Go host-local (exec'd) and cnm-ipam (through cnmd) share."""

    def __init__(self, cnm_env, tmp_path, sock, ranges):
        self.env = dict(cnm_env, CNM_HELPER_SOCKET=sock)
        self.data_dir = tmp_path / "ipam"
        self.network = unique("idx", 30)
        self.ranges = ranges

    @property
    def dir(self):
        return self.data_dir / self.network

    def conf(self, ipam_type):
        return {"cniVersion": VERSION, "name": self.network, "type": "bridge",
                "ipam": {"type": ipam_type, "dataDir": str(self.data_dir), "ranges": self.ranges}}

    def run(self, who, command, cid, ifname="eth0"):
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=cid, CNI_NETNS="/proc/self/ns/net",
                   CNI_IFNAME=ifname, CNI_ARGS="")
        if who == "go":
            argv, conf = [os.path.join(GO_PLUGINS, "host-local")], self.conf("host-local")
        else:
            argv, conf = [PYTHON, "-IS", "-X", "importtime", os.path.join(BIN, "cnm-ipam")], self.conf("cnm-ipam")
        proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120)
        if who == "cnm":
            assert b"cni_plugins.cli.plugin" not in proc.stderr, "not served by the helper"
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None

    def add(self, who, cid, ifname="eth0"):
        rc, out = self.run(who, "ADD", cid, ifname)
        assert rc == 0, (who, cid, out)
        return [ip["address"] for ip in out["ips"]]

    def leases(self):
        return {name: (self.dir / name).read_bytes() for name in os.listdir(self.dir)
                if name[0].isdigit() or ":" in name}


def watched_inodes(pid: int) -> set[int]:
    """Inode numbers the process's inotify instances watch."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("inotify wd:"):
                        fields = dict(item.split(":", 1) for item in line.split()[1:])
                        found.add(int(fields["ino"], 16))
        except OSError:
            continue
    return found


@pytest.fixture
def shared(cnm_env, tmp_path, cnmd):
    return Shared(cnm_env, tmp_path, cnmd[1], [[{"subnet": "10.234.0.0/24", "rangeStart": "10.234.0.2",
                                                  "rangeEnd": "10.234.0.4"}]])


def test_go_changes_between_helper_requests_are_seen(shared, cnmd):
    assert shared.add("cnm", "warm") == ["10.234.0.2/24"]  # the helper indexes the directory now
    assert os.stat(shared.dir).st_ino in watched_inodes(cnmd[0].pid)

    # Go allocates for x: the helper's ADD for x/eth0 is a duplicate allocation
    assert shared.add("go", "x") == ["10.234.0.3/24"]
    rc, out = shared.run("cnm", "ADD", "x")
    assert rc != 0 and out["code"] == 101, out
    assert "10.234.0.3 has been allocated to x, duplicate allocation is not allowed" in out["msg"], out
    assert shared.add("cnm", "x", "eth1") == ["10.234.0.4/24"]  # another interface of x is not
    assert shared.run("cnm", "CHECK", "x") == (0, None)

    # the range is full; Go releases x/eth0, the helper's ADD reuses exactly that address
    rc, out = shared.run("cnm", "ADD", "y")
    assert rc != 0 and "no IP addresses available" in out["msg"], out
    assert shared.run("go", "DEL", "x") == (0, None)
    rc, out = shared.run("cnm", "CHECK", "x")
    assert rc != 0 and out["code"] == 103, out  # the helper saw the lease go
    assert shared.add("cnm", "y") == ["10.234.0.3/24"]
    assert shared.leases()["10.234.0.3"] == b"y\r\neth0"

    # the helper's leases are released by Go; then Go allocates what the helper had
    assert shared.run("go", "DEL", "warm") == (0, None)
    assert shared.run("go", "DEL", "x", "eth1") == (0, None)
    assert shared.add("go", "z") == ["10.234.0.4/24"]  # round robin after the helper's .3
    rc, out = shared.run("cnm", "ADD", "z")
    assert rc != 0 and "10.234.0.4 has been allocated to z" in out["msg"], out
    assert shared.add("cnm", "w") == ["10.234.0.2/24"]
    assert shared.run("cnm", "DEL", "z") == (0, None)  # the helper releases Go's lease
    assert shared.add("go", "v") == ["10.234.0.4/24"]
    assert sorted(shared.leases()) == ["10.234.0.2", "10.234.0.3", "10.234.0.4"]


def test_legacy_files_written_by_hand_under_the_flock(shared):
    assert shared.add("cnm", "a") == ["10.234.0.2/24"]
    lock = os.open(shared.dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (shared.dir / "10.234.0.3").write_text("old")  # an id-only file of an old host-local
        fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)
    rc, out = shared.run("cnm", "ADD", "old", "eth7")
    assert rc != 0 and "10.234.0.3 has been allocated to old" in out["msg"], out
    assert shared.run("cnm", "DEL", "old", "eth7") == (0, None)  # ReleaseByID falls back to the id
    assert "10.234.0.3" not in shared.leases()
    assert shared.add("cnm", "old", "eth7") == ["10.234.0.3/24"]


def test_a_replaced_directory_is_read_afresh(shared, cnmd):
    assert shared.add("cnm", "a") == ["10.234.0.2/24"]
    shutil.rmtree(shared.dir)
    assert shared.add("go", "a") == ["10.234.0.2/24"]  # Go makes a new directory
    rc, out = shared.run("cnm", "ADD", "a")
    assert rc != 0 and "10.234.0.2 has been allocated to a" in out["msg"], out
    assert shared.add("cnm", "b") == ["10.234.0.3/24"]
    assert os.stat(shared.dir).st_ino in watched_inodes(cnmd[0].pid)
