"""Throwaway etcd clusters (Debian's etcd-server) for the overlay tests.

Each member listens on unix sockets in a fresh temporary directory (etcd wants `host:port` in
a unix URL and makes the socket `host:port` relative to its working directory, so every member
runs there and its sockets are `<name>c:1` (clients) and `<name>p:1` (peers)).
Members start one at a time, with a 100 ms heartbeat and a 1 s election timeout: a shorter
heartbeat is flaky on a loaded 2-core machine. Everything is killed and removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

ETCD = "/usr/bin/etcd"


class Member:
    def __init__(self, name: str, directory: str):
        self.name = name
        self.directory = directory
        self.proc: subprocess.Popen | None = None

    @property
    def client_url(self) -> str:
        return f"unix://{os.path.dirname(self.directory)}/{self.name}c:1"

    @property
    def peer_url(self) -> str:
        return f"unix://{self.name}p:1"  # relative to the cluster's directory

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    """`size` members (unix sockets), or a TLS single member on loopback TCP (`tls`: a dict of
    cert paths: ca, server_cert, server_key) that asks clients for certificates."""

    def __init__(self, size: int = 1, tls: dict | None = None, port: int = 0, address: str = "127.0.0.1",
                 netns: str = ""):
        self.root = tempfile.mkdtemp(prefix="cnm-etcd-")
        self.tls = tls
        self.port = port
        self.address = address  # the TLS member's client address, in `netns` if given
        self.netns = netns
        self.members = [Member(f"m{i}", os.path.join(self.root, f"m{i}")) for i in range(size)]
        for m in self.members:
            os.makedirs(m.directory)
        self.token = os.path.basename(self.root)

    @property
    def endpoints(self) -> list[str]:
        if self.tls:
            return [f"https://{self.address}:{self.port}"]
        return [m.client_url for m in self.members]

    def _args(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        args = [ETCD, "--name", m.name, "--data-dir", os.path.join(m.directory, "data"),
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                "--snapshot-count", "10000", "--log-level", "warn", "--logger", "zap"]
        if self.tls:
            url = f"https://{self.address}:{self.port}"
            args += ["--listen-client-urls", url, "--advertise-client-urls", url,
                     "--trusted-ca-file", self.tls["ca"], "--cert-file", self.tls["server_cert"],
                     "--key-file", self.tls["server_key"], "--client-cert-auth"]
        else:
            args += ["--listen-client-urls", f"unix://{m.name}c:1", "--advertise-client-urls", f"unix://{m.name}c:1"]
        return args

    def start_member(self, m: Member, state: str = "new") -> None:
        log = open(os.path.join(m.directory, "log"), "ab")
        wrap = ["nsenter", f"--net={self.netns}", "--"] if self.netns else []
        m.proc = subprocess.Popen(wrap + self._args(m, state), cwd=self.root, stdout=log, stderr=log,
                                  stdin=subprocess.DEVNULL)
        log.close()

    def start(self) -> "Cluster":
        for m in self.members:
            self.start_member(m)
            time.sleep(0.05)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Until a write through the gateway succeeds (a leader is elected)."""
        from cni_plugins.drivers.overlay import etcd

        client = self.client(timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.put(b"/cnm-test-ready", b"1")
                client.close()
                return
            except etcd.EtcdError:
                dead = [m.name for m in self.members if m.proc is not None and m.proc.poll() is not None]
                assert not dead and time.monotonic() < deadline, self.logs()
                time.sleep(0.05)

    def client(self, timeout: float = 5.0, **tls):
        from cni_plugins.drivers.overlay import etcd

        return etcd.Client(self.endpoints, etcd.TLS(**tls) if tls else None, timeout=timeout)

    def kill(self, m: Member, sig: int = signal.SIGKILL) -> None:
        if m.alive:
            m.proc.send_signal(sig)
            m.proc.wait(timeout=30)

    def restart(self, m: Member) -> None:
        for sock in (f"{m.name}c:1", f"{m.name}p:1"):  # a killed member leaves its sockets behind
            try:
                os.unlink(os.path.join(self.root, sock))
            except FileNotFoundError:
                pass
        self.start_member(m, state="existing")

    def logs(self) -> str:
        out = []
        for m in self.members:
            try:
                out.append(f"--- {m.name}\n" + open(os.path.join(m.directory, "log")).read()[-3000:])
            except OSError:
                pass
        return "\n".join(out)

    def stop(self) -> None:
        for m in self.members:
            self.kill(m)
        shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd_cluster():
    """A started single-member cluster, stopped and removed afterwards."""
    if not os.access(ETCD, os.X_OK):
        pytest.fail("etcd-server is not installed (scripts/setup.sh installs it)")
    cluster = Cluster(1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def etcd_cluster3():
    """A started 3-member cluster."""
    cluster = Cluster(3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextlib.contextmanager
def stopped(*members: Member):
    """Members wedged (SIGSTOP: their connections hang instead of being refused, as in a
    partition) for the block; resumed after it, also when it fails."""
    for m in members:
        m.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for m in members:
            if m.alive:
                m.proc.send_signal(signal.SIGCONT)
