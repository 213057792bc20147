"""containerd 1.6's `ctr run --cni` runs a busybox container on our network.

ctr executes the CNI plugins itself (go-cni -> libcni) from fixed places: conf dir
/etc/cni/net.d, bin dir /opt/cni/bin, and Debian's build also /usr/lib/cni. So ctr runs
under `unshare -m` with our conf dir, our bin dir and a private libcni cache bind-mounted
there and /usr/lib/cni hidden, and under `nsenter --net` in a throwaway "host" netns (the
bridge and its nftables are the test's). The conf dir holds the shipped
conf/containerd/10-cnm.conflist, made private (name, bridge, IPAM dir); the bin dir is laid
out as on a node: links to our plugins and `loopback` served by cnm-none.

The containerd daemon is private: own root, state, socket and config under a temp dir,
CRI plugin off; it is stopped, its shims killed and its mounts removed at the end.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import subprocess
import time

import pytest
from harness.conflists import adapt, load_shipped, random_subnet
from harness.containerd import Containerd
from harness.host import ensure_e2e_tools, wait_for_http
from harness.image import oci_archive
from harness.node import CLEAN, Node

from support.common import unique

NAMESPACE = "cnm-e2e"  # containerd namespace of these tests
IMAGE = "docker.io/library/cnm-busybox:e2e"
# Port publishing (portMappings) is issue 5's. ctr has no -p: a published port reaches the
# plugin as a literal runtimeConfig in the conflist. Set to False when issue 5 lands.
PUBLISH_PENDING = False


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    ensure_e2e_tools()
    work = str(tmp_path_factory.mktemp("containerd"))
    daemon = Containerd(work, namespace=NAMESPACE)
    try:
        daemon.start()
        daemon.import_image(oci_archive(os.path.join(work, "image.tar"), IMAGE))
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def node(tmp_path, containerd):
    made = []

    def make(runtime_config: dict | None = None) -> Node:
        """A node whose conf dir holds the shipped containerd list, made private (name, bridge, IPAM
        dir, range; a literal runtimeConfig when given)."""
        n = Node(tmp_path / f"node{len(made)}")
        made.append(n)
        conflist = adapt(load_shipped("containerd/10-cnm.conflist"), unique("cnmctr", 30), unique("cnk"), n.data_dir,
                         subnet=random_subnet())
        if runtime_config:
            conflist["plugins"][0]["runtimeConfig"] = runtime_config
        n.add_network(conflist, "10-cnm.conflist")
        return n

    yield make
    for n in made:
        n.cleanup()


def ctr_run_argv(node: Node, containerd: Containerd, cid: str, script: str) -> list[str]:
    """ctr run --rm --cni in a private mount namespace that shows the node's CNI dirs where ctr looks
    (/etc/cni/net.d, /opt/cni/bin, /var/lib/cni), and hides Debian's /usr/lib/cni."""
    hidden = os.path.join(node.work, "empty")
    os.makedirs(hidden, exist_ok=True)
    os.makedirs(node.cache_dir, exist_ok=True)
    setup = " && ".join(
        [
            "mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni",
            f"mount --bind {shlex.quote(node.conf_dir)} /etc/cni/net.d",
            f"mount --bind {shlex.quote(node.bin_dir)} /opt/cni/bin",
            f"mount --bind {shlex.quote(hidden)} /usr/lib/cni",
            f"mount --bind {shlex.quote(node.cache_dir)} /var/lib/cni",
        ]
    )
    ctr = containerd.ctr_argv("run", "--rm", "--cni", IMAGE, cid, "sh", "-c", script)
    return ["nsenter", f"--net={node.host}", "--", "unshare", "-m", "--propagation", "private", "--",
            "sh", "-c", f"{setup} && exec {shlex.join(ctr)}"]


def ctr_run(node: Node, containerd: Containerd, cid: str, script: str, timeout: float = 90):
    return subprocess.run(ctr_run_argv(node, containerd, cid, script), capture_output=True, text=True,
                          env=node.env(), timeout=timeout)


def ctr_start(node: Node, containerd: Containerd, cid: str, script: str) -> subprocess.Popen:
    return subprocess.Popen(ctr_run_argv(node, containerd, cid, script), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=node.env())


def ctr_end(containerd: Containerd, cid: str, server: subprocess.Popen) -> None:
    """Kill a started container; `ctr run --rm` then DELs and removes it when the task ends."""
    containerd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        containerd.remove_container(cid)


def http_get(ip: str, port: int) -> str:
    """A shell command (in the container) fetching /: busybox wget crashes on a refused connection."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port} | grep -q 'hello from cnm-cni'"


def test_ctr_run_gets_an_ip_reaches_the_gateway_and_leaves_nothing(node, containerd):
    n = node()
    net = n.networks[0]
    cid = unique("cnmctr", 30)
    script = f"ip -4 -o addr show eth0; ip route; ping -c 1 -W 3 {net.gateway} && echo GATEWAY-OK"
    proc = ctr_run(n, containerd, cid, script)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{containerd.log_tail()}"
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/24", proc.stdout)
    assert match, proc.stdout
    prefix = net.subnet.rsplit(".", 1)[0] + "."
    assert match.group(1).startswith(prefix) and match.group(1) != net.gateway
    assert f"default via {net.gateway} dev eth0" in proc.stdout
    assert "GATEWAY-OK" in proc.stdout
    # ctr --rm tore the container down, and with it (CNI DEL) everything we made for it.
    assert n.leftovers() == CLEAN
    assert cid not in containerd.containers()
    assert n.pins() == []


def test_two_ctr_containers_on_one_network_reach_each_other(node, containerd):
    """A server container stays up while a second one reaches it by its IP over the bridge."""
    n = node()
    net = n.networks[0]
    server_id, client_id = unique("cnmsrv", 30), unique("cnmcli", 30)
    server = ctr_start(n, containerd, server_id,
                       "ip -4 -o addr show eth0; echo READY; exec httpd -f -p 8080 -h /www")
    try:
        lines = []
        deadline = time.monotonic() + 60
        while "READY" not in lines and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", " ".join(lines))
        assert match, f"{lines}\n{server.stderr.read() if server.poll() is not None else ''}"
        server_ip = match.group(1)
        proc = ctr_run(n, containerd, client_id, f"for i in 1 2 3 4 5 6 7 8 9 10; do {http_get(server_ip, 8080)} && exit 0; "
                                                   f"sleep 0.3; done; exit 1")
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{lines}"
        assert len(n.bridge_ports(net.bridge)) == 1  # the client is gone, the server is still attached
    finally:
        ctr_end(containerd, server_id, server)
    assert n.leftovers() == CLEAN
    assert set(containerd.containers()).isdisjoint({server_id, client_id})


@pytest.mark.xfail(PUBLISH_PENDING, reason="port publishing (portMappings) comes with issue 5", strict=False)
def test_ctr_published_port_answers_from_the_host(node, containerd):
    """ctr has no -p: the port mapping is a literal runtimeConfig in the conflist (R20)."""
    host_port = random.randint(20000, 29999)
    n = node(runtime_config={"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]})
    net = n.networks[0]
    cid = unique("cnmpub", 30)
    server = ctr_start(n, containerd, cid, "echo READY; exec httpd -f -p 80 -h /www")
    try:
        assert server.stdout.readline().strip() == "READY"
        assert "hello from cnm-cni" in wait_for_http(n.host, net.gateway, host_port, "hello from cnm-cni")
    finally:
        ctr_end(containerd, cid, server)
    assert n.leftovers() == CLEAN
