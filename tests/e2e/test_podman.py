"""podman 4.3 with its CNI backend runs containers on our network (the shipped podman conflist).

podman is private to the test module: containers.conf and storage.conf (given by
CONTAINERS_CONF / CONTAINERS_STORAGE_CONF) put its storage, run root, tmp dir, events
and network config dir under a temp dir; `conmon_env_vars` hands the same environment to
the `podman container cleanup` that conmon runs when a container exits (it tears the
network down, and would otherwise read the machine's default config). Every podman
command runs in a throwaway "host" netns (nsenter --net). Known needs on these machines:
root cannot raise rlimits (so default_ulimits are pinned to the current hard limits) and
there is no systemd (cgroupfs, file events).
"""

from __future__ import annotations

import json
import os
import random
import resource
import time

import pytest
from harness.conflists import adapt, load_shipped, random_subnet
from harness.host import BIN, LIBCNI_DIR, base_env, ensure_e2e_tools, kill, processes, sh, unmount_under, wait_for_http
from harness.image import rootfs_tar
from harness.node import CLEAN, Network, Node

from support.common import unique

IMAGE = "localhost/cnm-busybox:e2e"
# Port publishing (-p, the portMappings capability) is issue 5's. Set to False when it lands.
PUBLISH_PENDING = False


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


class Podman:
    """podman with private storage, run root, tmp dir and events (one per module: the image is
    imported once); a node's containers.conf adds its CNI dirs and its CNM store."""

    def __init__(self, work: str):
        self.work = work
        self.storage_conf = os.path.join(work, "storage.conf")
        with open(self.storage_conf, "w") as f:
            f.write(
                f"""[storage]
driver = "overlay"
graphroot = {json.dumps(os.path.join(work, "storage"))}
runroot = {json.dumps(os.path.join(work, "runroot"))}
"""
            )
        self.containers_conf = self.configure(None)

    def configure(self, node: Node | None) -> str:
        """containers.conf for `node` (its path): the CNI backend on the node's dirs."""
        path = os.path.join(node.work if node else self.work, "containers.conf")
        hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 32768 if hard_nproc == resource.RLIM_INFINITY else min(32768, hard_nproc)
        network = ""
        if node is not None:
            network = f"""
[network]
network_backend = "cni"
cni_plugin_dirs = [{json.dumps(node.bin_dir)}]
network_config_dir = {json.dumps(node.conf_dir)}
"""
        env = self.env(node, path)
        with open(path, "w") as f:
            f.write(
                f"""[containers]
default_ulimits = ["nofile={hard_nofile}:{hard_nofile}", "nproc={nproc}:{nproc}"]
{network}
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {json.dumps(os.path.join(self.work, "events.log"))}
tmp_dir = {json.dumps(os.path.join(self.work, "tmp"))}
volume_path = {json.dumps(os.path.join(self.work, "volumes"))}
conmon_env_vars = {toml_list([f"{k}={v}" for k, v in env.items()])}
"""
            )
        return path

    def env(self, node: Node | None, containers_conf: str = "") -> dict[str, str]:
        """podman's environment, handed also to the `podman container cleanup` conmon runs."""
        extra = {"CONTAINERS_CONF": containers_conf or self.containers_conf,
                 "CONTAINERS_STORAGE_CONF": self.storage_conf}
        return node.env(**extra) if node else base_env(**extra)

    def __call__(self, *args: str, node: Node | None = None, check: bool = True, timeout: float = 90):
        conf = os.path.join(node.work, "containers.conf") if node else ""
        return sh("podman", *args, ns=node.host if node else "", env=self.env(node, conf), check=check,
                  timeout=timeout)

    def teardown(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
        self("rmi", "--all", "--force", check=False, timeout=120)
        for conmon in processes(b"conmon", os.path.join(self.work, "storage").encode()):
            kill(conmon)  # conmons of our containers carry our storage path on their command line
        unmount_under(self.work)


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    ensure_e2e_tools()
    work = str(tmp_path_factory.mktemp("podman"))
    p = Podman(work)
    try:
        p("import", rootfs_tar(os.path.join(work, "rootfs.tar")), IMAGE, timeout=120)
        yield p
    finally:
        p.teardown()


class Net:
    """One network of a node (the shipped podman conflist, made private), driven by podman."""

    def __init__(self, podman: Podman, node: Node, network: Network):
        self.podman = podman
        self.node = node
        self.network = network
        self.name, self.subnet, self.gateway, self.host = network.name, network.subnet, network.gateway, node.host

    def run(self, *args: str, check: bool = True, timeout: float = 90):
        return self.podman(*args, node=self.node, check=check, timeout=timeout)

    def ip_of(self, container: str) -> str:
        out = self.run("inspect", container, "--format", "{{json .NetworkSettings.Networks}}").stdout
        return json.loads(out)[self.name]["IPAddress"]

    def leftovers(self) -> dict:
        return self.node.leftovers(self.network)


def shipped_network(node: Node, avoid: str = "") -> Network:
    subnet = random_subnet()
    while subnet == avoid:
        subnet = random_subnet()
    conflist = adapt(load_shipped("podman/cnm.conflist"), unique("cnmpod", 30), unique("cnp"), node.data_dir,
                     subnet=subnet)
    return node.add_network(conflist)


@pytest.fixture
def net(podman, tmp_path):
    node = Node(tmp_path / "node", cache_dir=LIBCNI_DIR)
    podman.configure(node)
    n = Net(podman, node, shipped_network(node))
    yield n
    n.run("rm", "--all", "--force", "--time", "0", check=False)
    node.cleanup()


def test_two_containers_ping_each_other_and_rm_leaves_nothing(net):
    a, b = unique("cnma", 30), unique("cnmb", 30)
    net.run("run", "-d", "--network", net.name, "--name", a, IMAGE, "sleep", "300")
    net.run("run", "-d", "--network", net.name, "--name", b, IMAGE, "sleep", "300")
    ip_a, ip_b = net.ip_of(a), net.ip_of(b)
    prefix = net.subnet.rsplit(".", 1)[0] + "."
    assert ip_a.startswith(prefix) and ip_b.startswith(prefix) and ip_a != ip_b
    net.run("exec", a, "ping", "-c", "1", "-W", "3", ip_b)
    net.run("exec", b, "ping", "-c", "1", "-W", "3", ip_a)
    net.run("exec", a, "ping", "-c", "1", "-W", "3", net.gateway)
    sandboxes = [net.run("inspect", c, "--format", "{{.NetworkSettings.SandboxKey}}").stdout.strip() for c in (a, b)]
    left = net.leftovers()
    assert len(left["bridge ports"]) == 2 and len(left["leases"]) == 2 and len(left["store"]["endpoints"]) == 2
    net.run("rm", "--force", "--time", "0", a, b)
    assert net.leftovers() == CLEAN
    assert [s for s in sandboxes if os.path.exists(s)] == []
    assert net.run("ps", "-a", "-q").stdout.split() == []


def test_foreground_run_with_rm_tears_down(net):
    """`podman run --rm`: ADD, the command sees its interface and route, DEL when it exits."""
    proc = net.run("run", "--rm", "--network", net.name, IMAGE, "sh", "-c",
                   f"ip -4 -o addr show eth0; ip route; ping -c 1 -W 3 {net.gateway}")
    assert f"default via {net.gateway} dev eth0" in proc.stdout
    assert " 0% packet loss" in proc.stdout
    start = time.monotonic()
    while net.leftovers() != CLEAN and time.monotonic() - start < 10:
        time.sleep(0.2)  # the exit-command cleanup may finish just after `run` returns
    assert net.leftovers() == CLEAN


@pytest.mark.xfail(PUBLISH_PENDING, reason="port publishing (portMappings) comes with issue 5", strict=False)
def test_published_port_answers_from_the_host(net):
    host_port = random.randint(30000, 39999)
    name = unique("cnmweb", 30)
    net.run("run", "-d", "--network", net.name, "--name", name, "-p", f"{host_port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, host_port, "hello from cnm-cni")
    net.run("rm", "--force", "--time", "0", name)
    assert net.leftovers() == CLEAN


# -- day-2: `cnmctl gc NETWORK` (issue 17 item 1) -------------------------------------------------


def eth0_of(net, container: str) -> str:
    """`ip -4 -o addr show eth0` inside the container ("" when eth0 is gone)."""
    proc = net.run("exec", container, "ip", "-4", "-o", "addr", "show", "eth0", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def fail_del_once(net, container: str) -> None:
    """The container's DEL fails (its plugin is missing for a moment, as during an upgrade);
    podman logs it, unmounts its netns anyway and forgets the container."""
    link = os.path.join(net.node.bin_dir, "cnm-bridge")
    os.unlink(link)
    try:
        net.run("rm", "--force", "--time", "0", container, check=False)
    finally:
        os.symlink(os.path.join(BIN, "cnm-bridge"), link)
    assert container not in net.run("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_gc_network_keeps_running_containers_and_collects_a_gone_one(net):
    """Issue 17 item 1: `cnmctl gc NETWORK` DELed every cached attachment of the shared libcni
    cache: two running containers lost eth0, veth, lease, record and published port. Now
    both survive, and a container whose netns is really gone (podman removed it after its
    DEL failed) is collected."""
    host_port = random.randint(30000, 39999)
    web, idle, gone = unique("cnmgw", 30), unique("cnmgi", 30), unique("cnmgg", 30)
    net.run("run", "-d", "--network", net.name, "--name", web, "-p", f"{host_port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    net.run("run", "-d", "--network", net.name, "--name", idle, IMAGE, "sleep", "300")
    net.run("run", "-d", "--network", net.name, "--name", gone, IMAGE, "sleep", "300")
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, host_port, "hello from cnm-cni")
    gone_ip = net.ip_of(gone)
    # The DEL of `gone` fails (its plugin is missing for a moment): podman removes the netns anyway.
    fail_del_once(net, gone)
    assert gone_ip in net.leftovers()["leases"]  # what the failed DEL left behind
    before = {c: eth0_of(net, c) for c in (web, idle)}
    assert all(before.values()), before

    proc = net.node.cnmctl("gc", net.name)

    assert {c: eth0_of(net, c) for c in (web, idle)} == before, proc.stdout
    left = net.leftovers()
    assert len(left["bridge ports"]) == 2 and len(left["store"]["endpoints"]) == 2, left
    assert sorted(left["leases"]) == sorted([net.ip_of(web), net.ip_of(idle)]), left
    assert len(left["libcni cache"]) == 2, left
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, host_port, "hello from cnm-cni")
    rows = proc.stdout.splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == ["deleted", "kept", "kept"], proc.stdout
    assert len(net.run("ps", "-q", "--filter", "status=running").stdout.split()) == 2
    net.run("rm", "--force", "--time", "0", web, idle)
    assert net.leftovers() == CLEAN


# -- one container, one published port, two networks (issue 17 item 7) ----------------------------


@pytest.fixture
def net2(net):
    """A second network on the same node as `net` (its own bridge, subnet and leases)."""
    n = Net(net.podman, net.node, shipped_network(net.node, avoid=net.subnet))
    yield n
    net.node.remove_network(n.network)


def dnat_target(host: str, port: int) -> str | None:
    """The container address the node's nftables send `port` to (None: not published)."""
    proc = sh("nft", "-j", "list", "map", "inet", "cnm", "ports4_any_addr", ns=host, check=False)
    if proc.returncode != 0:
        return None
    for item in json.loads(proc.stdout)["nftables"]:
        for key, data in (item.get("map") or {}).get("elem", []):
            if key["elem"]["val"]["concat"] == ["tcp", port]:
                return data
    return None


def serves(net, port: int) -> bool:
    return "hello from cnm-cni" in wait_for_http(net.host, net.gateway, port, "hello from cnm-cni")


def publish_elsewhere_works(net, port: int) -> None:
    """Another container can publish the port now (it was freed)."""
    other = unique("cnmpo", 30)
    net.run("run", "-d", "--network", net.name, "--name", other, "-p", f"{port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    assert serves(net, port) and dnat_target(net.host, port) == net.ip_of(other)
    net.run("rm", "--force", "--time", "0", other)


def test_run_on_two_networks_with_a_published_port(net, net2):
    """Issue 17 item 7: `podman run --network a,b -p PORT:80` failed with "port already allocated
    ... published by container <itself>". The reference starts, and so does ours: the port
    answers, passes to the other network when one is disconnected, and is free after rm."""
    port = random.randint(30000, 39999)
    web = unique("cnmtw", 30)
    net.run("run", "-d", "--network", f"{net.name},{net2.name}", "--name", web, "-p", f"{port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    ips = {net.name: net.ip_of(web), net2.name: net2.ip_of(web)}
    assert serves(net, port) and serves(net2, port)
    owner = dnat_target(net.host, port)
    assert owner in ips.values(), (owner, ips)  # whichever network podman ADDed first
    first = net if ips[net.name] == owner else net2
    other = net2 if first is net else net
    net.run("network", "disconnect", first.name, web)
    assert dnat_target(net.host, port) == ips[other.name]  # handed over to the remaining network
    assert serves(other, port)
    net.run("rm", "--force", "--time", "0", web)
    assert dnat_target(net.host, port) is None
    assert net.leftovers() == CLEAN and net2.leftovers() == CLEAN
    publish_elsewhere_works(net2, port)


def test_network_connect_of_a_publishing_container(net, net2):
    """Issue 17 item 7: `podman network connect` of a container that publishes a port failed
    the same way."""
    port = random.randint(30000, 39999)
    web = unique("cnmtc", 30)
    net.run("run", "-d", "--network", net.name, "--name", web, "-p", f"{port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    net.run("network", "connect", net2.name, web)
    assert dnat_target(net.host, port) == net.ip_of(web)  # the first network keeps it
    assert serves(net, port) and serves(net2, port)
    net.run("network", "disconnect", net.name, web)
    assert dnat_target(net.host, port) == net2.ip_of(web)
    assert serves(net2, port)
    net.run("rm", "--force", "--time", "0", web)
    assert dnat_target(net.host, port) is None
    assert net.leftovers() == CLEAN and net2.leftovers() == CLEAN
    publish_elsewhere_works(net, port)


# -- a failed DEL that podman then forgot (issue 17 item 4) -----------------------------------------


def test_a_forgotten_failed_del_is_collected_and_its_port_comes_back(net):
    """Issue 17 item 4: after one failed DEL under podman our pin kept the namespace alive:
    the old address still answered, the DNAT of its port stayed, and the next `podman run -p`
    of that port failed with "port already allocated ... published by container <the removed
    one>"; doctor and `cnmctl gc` saw nothing stale. Now the sandbox is recognised as
    abandoned: the next ADD that needs its port collects it, and so does `cnmctl gc`."""
    first_port, second_port = random.sample(range(30000, 39999), 2)
    old = unique("cnmfo", 30)
    net.run("run", "-d", "--network", net.name, "--name", old, "-p", f"{first_port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, first_port, "hello from cnm-cni")
    fail_del_once(net, old)
    assert len(net.leftovers()["leases"]) == 1  # the pinned, forgotten sandbox
    # The same port again: the ADD collects the abandoned sandbox and publishes the new one.
    new = unique("cnmfn", 30)
    net.run("run", "-d", "--network", net.name, "--name", new, "-p", f"{first_port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    assert dnat_target(net.host, first_port) == net.ip_of(new)
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, first_port, "hello from cnm-cni")
    assert net.leftovers()["leases"] == [net.ip_of(new)]
    # Another one forgotten: doctor names it, the node-wide `cnmctl gc` collects it.
    other = unique("cnmfx", 30)
    net.run("run", "-d", "--network", net.name, "--name", other, "-p", f"{second_port}:80", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    other_ip = net.ip_of(other)
    fail_del_once(net, other)
    doctor = json.loads(net.node.cnmctl("doctor", "-f", "json", check=False).stdout)
    stale = [f for f in doctor if f["check"] == "stale" and f["severity"] == "error"]
    assert len(stale) == 1 and "only our pin" in stale[0]["message"], stale
    report = json.loads(net.node.cnmctl("gc", "--format", "json").stdout)
    assert [a["kind"] for a in report["removed"]] == ["release"], report
    assert other_ip not in net.leftovers()["leases"] and dnat_target(net.host, second_port) is None
    assert "hello from cnm-cni" in wait_for_http(net.host, net.gateway, first_port, "hello from cnm-cni")
    net.run("rm", "--force", "--time", "0", new)
    # podman kept its libcni cache entries of the two failed DELs: `cnmctl gc NETWORK` drops them
    # (their namespaces are gone), a no-op for our plugins by now.
    net.node.cnmctl("gc", net.name)
    assert net.leftovers() == CLEAN


def test_macvlan_conflist_containers_on_the_lan(podman, tmp_path, netns):
    """Issue 15 item 5: podman with the shipped cnm-macvlan list (conf/macvlan.conflist) on a
    simulated LAN: two containers reach each other and the LAN peer, the peer learns their
    MACs; `podman rm` leaves no macvlan, lease, record or cache entry."""
    node = Node(tmp_path / "mvnode", cache_dir=LIBCNI_DIR)
    try:
        podman.configure(node)
        lan = netns("cnml")
        master = node.add_uplink(lan, "192.168.1.1/24")
        conflist = adapt(load_shipped("macvlan.conflist"), unique("cnmmv", 30), unique("cnp"), node.data_dir,
                         master=master)
        net = Net(podman, node, node.add_network(conflist))
        a, b = unique("cnma", 30), unique("cnmb", 30)
        for c in (a, b):
            net.run("run", "-d", "--network", net.name, "--name", c, IMAGE, "sleep", "300")
        ip_a, ip_b = net.ip_of(a), net.ip_of(b)
        assert ip_a.startswith("192.168.1.") and ip_a != ip_b
        net.run("exec", a, "ping", "-c", "1", "-W", "3", ip_b)
        net.run("exec", b, "ping", "-c", "1", "-W", "3", "192.168.1.1")
        net.run("exec", a, "ping", "-c", "1", "-W", "3", "192.168.1.1")
        neigh = json.loads(sh("ip", "-j", "neigh", "show", ns=lan).stdout or "[]")
        mac_a = net.run("exec", a, "cat", "/sys/class/net/eth0/address").stdout.strip()
        assert {n["dst"]: n.get("lladdr") for n in neigh}.get(ip_a) == mac_a
        net.run("rm", "--force", "--time", "0", a, b)
        assert net.leftovers() == CLEAN
        assert [n for n, link in node.links().items() if link.get("linkinfo", {}).get("info_kind") == "macvlan"] == []
    finally:
        podman("rm", "--all", "--force", "--time", "0", node=node, check=False)
        node.cleanup()
