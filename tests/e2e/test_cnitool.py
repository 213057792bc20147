"""cnitool (libcni itself, built from Debian's packages) drives our plugins, and shares its
result cache with cnmctl: an attachment added by one is checked and deleted by the other.

Debian 12's cnitool is libcni 1.1.2, which speaks CNI up to 1.0.0 and has no gc/status:
lists are run at 1.0.0 here (the shipped ones also offer 1.1.0 through `cniVersions`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os

import pytest
from harness.conflists import adapt, available, bridge_conflist, load_shipped, plugin_types, shipped_conflists
from harness.host import BIN, GO_PLUGINS, LIBCNI_DIR, TOOLS_BIN, ensure_e2e_tools, sh
from harness.node import CLEAN, Node

from cni_plugins.cli.cnmctl import cnitool_container_id
from cni_plugins.linux import netns as nsmod
from support.common import unique


@pytest.fixture(scope="session")
def cnitool() -> str:
    ensure_e2e_tools()
    path = os.path.join(TOOLS_BIN, "cnitool")
    assert os.access(path, os.X_OK), f"{path} was not built"
    return path


class World:
    """A node (its netns playing the machine, private state, a conf dir; the machine's libcni cache,
    which cnitool cannot move), container netns, and runners for both tools."""

    def __init__(self, netns_factory, tmp_path, cnitool: str):
        self.node = Node(tmp_path, cache_dir=LIBCNI_DIR)
        self.host = self.node.host
        self.netns = netns_factory
        self.cnitool = cnitool
        # plugins found as a developer's machine has them: bin/ and Debian's Go plugins
        self.env = self.node.env(NETCONFPATH=self.node.conf_dir, CNI_PATH=f"{BIN}:{GO_PLUGINS}")

    def network(self, conflist: dict) -> str:
        return self.node.add_network(conflist).name

    def tool(self, argv0: str, command: str, network: str, netns: str, check: bool = True, **env: str):
        return sh(argv0, command, network, netns, ns=self.host, env={**self.env, **env}, check=check)

    def cnitool_run(self, *args, **env):
        return self.tool(self.cnitool, *args, **env)

    def cnmctl_run(self, *args, **env):
        return self.tool(os.path.join(BIN, "cnmctl"), *args, **env)

    def cache_files(self, name: str) -> list[str]:
        return self.node.cache_entries([n for n in self.node.networks if n.name == name])

    def leftovers(self, name: str) -> dict:
        return self.node.leftovers(*[n for n in self.node.networks if n.name == name])


@pytest.fixture
def world(netns, tmp_path, cnitool):
    w = World(netns, tmp_path, cnitool)
    yield w
    w.node.cleanup()


SHIPPED = shipped_conflists()


@pytest.mark.parametrize("relpath", SHIPPED)
def test_shipped_conflist_add_check_del(world, relpath):
    """Every shipped list whose plugins exist: cnitool add, check, del; nothing left."""
    shipped = load_shipped(relpath)
    missing = sorted(t for t in plugin_types(shipped) if not available(t))
    assert not missing, f"{relpath} needs plugins that do not exist: {missing}"
    master = world.node.add_uplink() if "cnm-macvlan" in plugin_types(shipped) else None
    conflist = adapt(shipped, unique("cnmtool", 30), unique("cnt"), world.node.data_dir, version="1.0.0",
                     master=master)
    if "cnm-overlay" in plugin_types(shipped):
        with overlay_store(world, conflist):
            exercise(world, conflist)
        return
    exercise(world, conflist)


@contextlib.contextmanager
def overlay_store(world: World, conflist: dict):
    """A cnm-overlay list made runnable on the test's node: a throwaway etcd (unix socket) as
    its store, an uplink with an address as its underlay, a node name of its own."""
    from support.etcd import Cluster

    uplink = world.node.add_uplink()
    sh("ip", "addr", "add", "192.0.2.10/24", "dev", uplink, ns=world.host)
    cluster = Cluster(1).start()
    try:
        for plugin in conflist["plugins"]:
            if plugin.get("type") == "cnm-overlay":
                plugin.update(store={"endpoints": cluster.endpoints, "prefix": f"/{unique('cnmt')}"},
                              underlayInterface=uplink, nodeName=unique("node"))
        yield
    finally:
        cluster.stop()


PLUGIN_LISTS = {
    "cnm-none": [{"type": "cnm-none"}],
    "cnm-host": [{"type": "cnm-host"}],
    "cnm-container": [{"type": "cnm-container"}],
    "cnm-bridge": None,  # bridge_conflist()
    "cnm-overlay": [{"type": "cnm-overlay", "subnet": "10.62.0.0/16"}],  # (its store: overlay_store())
    "cnm-macvlan": [{"type": "cnm-macvlan", "master": "<uplink>",
                     "ipam": {"type": "cnm-ipam", "ranges": [[{"subnet": "10.61.10.0/24"}]]}}],
}


@pytest.mark.parametrize("ptype", sorted(PLUGIN_LISTS))
def test_every_plugin_type_add_check_del(world, ptype):
    """Each of our plugin types, whatever conf/ ships: cnitool add, check, del; nothing left."""
    name, bridge = unique("cnmtype", 30), unique("cnt")
    if PLUGIN_LISTS[ptype] is None:
        conflist = bridge_conflist(name, bridge, "10.61.9.0/24", world.node.data_dir)
    else:
        conflist = {"cniVersion": "1.0.0", "name": name, "plugins": PLUGIN_LISTS[ptype]}
        conflist = adapt(conflist, name, bridge, world.node.data_dir,
                         master=world.node.add_uplink() if ptype == "cnm-macvlan" else None)
    if ptype == "cnm-overlay":
        with overlay_store(world, conflist):
            exercise(world, conflist)
        return
    exercise(world, conflist)


def exercise(world: World, conflist: dict) -> None:
    name = world.network(conflist)
    types = plugin_types(conflist)
    ifname = "lo" if types <= {"cnm-none", "loopback"} else "eth0"
    extra: dict[str, str] = {"CNI_IFNAME": ifname}
    if "cnm-host" in types:
        target = world.host  # the host driver only accepts the namespace the plugin runs in
    elif "cnm-container" in types:
        target = _sandbox_to_join(world, extra)
    else:
        target = world.netns("cnmc")
    added = world.cnitool_run("add", name, target, **extra)
    result = json.loads(added.stdout)
    assert result["cniVersion"] == "1.0.0"
    [cached] = world.cache_files(name)
    assert json.load(open(cached))["kind"] == "cniCacheV1"
    world.cnitool_run("check", name, target, **extra)
    world.cnitool_run("del", name, target, **extra)
    assert world.cache_files(name) == []
    if "cnm-macvlan" in types:
        assert sh("ip", "link", "show", ifname, ns=target, check=False).returncode != 0, "macvlan left behind"
    if "cnm-container" in types:
        # The owner is still attached; its DEL, the last member's, takes the sandbox down.
        owner, owner_ns = world.owner
        assert len(world.node.store()[0]) == 1
        world.cnitool_run("del", owner, owner_ns, CNI_IFNAME="lo")
        name = owner
    assert world.leftovers(name) == CLEAN


def _sandbox_to_join(world: World, extra: dict) -> str:
    """cnm-container joins another container's sandbox: make one (cnm-none) and a second path
    to its netns, so cnitool derives a different container id for the joiner."""
    owner_ns = world.netns("cnmc")
    owner = world.network({"cniVersion": "1.0.0", "name": unique("cnmown", 30), "plugins": [{"type": "cnm-none"}]})
    world.cnitool_run("add", owner, owner_ns, CNI_IFNAME="lo")
    world.owner = (owner, owner_ns)
    joiner_ns = world.netns("cnmj")  # a fresh name; replaced by a bind mount of the owner's netns
    sh("ip", "netns", "del", os.path.basename(joiner_ns))
    fd = nsmod.open_netns(owner_ns)
    try:
        nsmod.pin(fd, joiner_ns)
    finally:
        os.close(fd)
    extra["CNI_ARGS"] = f"IgnoreUnknown=1;CNM_CONTAINER={cnitool_container_id(owner_ns)}"
    return joiner_ns


@pytest.fixture
def bridge_net(world):
    subnet = "10.61.7.0/24"
    conflist = bridge_conflist(unique("cnmx", 30), unique("cnx"), subnet, world.node.data_dir, version="1.0.0",
                               capabilities={"portMappings": True})
    world.network(conflist)
    return conflist


ARGS = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=web",
        "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
                                "bandwidth": {"ingressRate": 1}})}


@pytest.mark.parametrize("adder, remover", [("cnmctl", "cnitool"), ("cnitool", "cnmctl")])
def test_cache_is_interchangeable(world, bridge_net, adder, remover):
    """One tool adds, the other checks and deletes using the first one's cache."""
    run = {"cnmctl": world.cnmctl_run, "cnitool": world.cnitool_run}
    name, bridge = bridge_net["name"], bridge_net["plugins"][0]["bridge"]
    target = world.netns("cnmc")
    result = json.loads(run[adder]("add", name, target, **ARGS).stdout)
    assert result["cniVersion"] == "1.0.0"
    [eth0] = [i for i in result["interfaces"] if i.get("sandbox")]
    assert eth0["name"] == "eth0" and eth0["sandbox"] == target
    [cached] = world.cache_files(name)
    assert os.path.basename(cached) == f"{name}-{cnitool_container_id(target)}-eth0"
    doc = json.load(open(cached))
    assert base64.b64decode(doc["config"]) == open(os.path.join(world.node.conf_dir, f"{name}.conflist"), "rb").read()
    assert doc["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "e2e"], ["K8S_POD_NAME", "web"]]
    assert doc["capabilityArgs"] == json.loads(ARGS["CAP_ARGS"])
    assert doc["result"]["ips"] == result["ips"]
    assert len(world.node.bridge_ports(bridge)) == 1
    run[remover]("check", name, target, **ARGS)
    run[remover]("del", name, target, **ARGS)
    assert world.leftovers(name) == CLEAN
    # DEL again (the runtime retries): still fine, still nothing.
    run[adder]("del", name, target, **ARGS)
    assert world.leftovers(name) == CLEAN


def test_cnmctl_and_cnitool_write_the_same_cache_document(world, bridge_net):
    """Same attachment, one tool after the other: the cache files agree field by field."""
    name = bridge_net["name"]
    target = world.netns("cnmc")
    docs = {}
    for tool in ("cnitool", "cnmctl"):
        run = world.cnitool_run if tool == "cnitool" else world.cnmctl_run
        run("add", name, target, **ARGS)
        [cached] = world.cache_files(name)
        docs[tool] = json.load(open(cached))
        run("del", name, target, **ARGS)
    go, ours = docs["cnitool"], docs["cnmctl"]
    assert ours.pop("netns") == target  # newer libcni records the netns; 1.1.2 does not
    assert list(ours) == list(go)
    for key in ("kind", "containerId", "config", "ifName", "networkName", "cniArgs", "capabilityArgs"):
        assert ours[key] == go[key], key
    assert set(ours["result"]) == set(go["result"])  # "dns":{} included, as Go prints it
    assert ours["result"]["dns"] == go["result"]["dns"]
    assert ours["result"]["cniVersion"] == go["result"]["cniVersion"] == "1.0.0"


def test_check_fails_after_the_interface_is_gone(world, bridge_net):
    """cnitool check reports our plugin's CHECK failure (error object on stdout, non-zero exit)."""
    name = bridge_net["name"]
    target = world.netns("cnmc")
    world.cnmctl_run("add", name, target)
    sh("ip", "link", "del", "eth0", ns=target)
    proc = world.cnitool_run("check", name, target, check=False)
    assert proc.returncode != 0 and proc.stderr.strip(), proc
    world.cnitool_run("del", name, target)
    assert world.leftovers(name) == CLEAN
