"""podman 4.3 (CNI backend) on a DNS-enabled cnm network (issue 14 item 4): containers resolve
each other by --name and --network-alias through the network's name server (run by a helper
in the node's host netns), and reach each other by name."""

from __future__ import annotations

import os
import subprocess

import pytest
from harness.conflists import adapt, load_shipped, random_subnet
from harness.host import BIN, LIBCNI_DIR
from harness.node import Node
from test_podman import IMAGE, Net, podman  # noqa: F401  (the module's podman fixture)

from conftest import unique, wait_listening


class HelperNode(Node):
    """A node whose plugin execs go to a helper of its own, started in its host netns."""

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(CNM_HELPER_SOCKET=os.path.join(self.work, "cnmd.sock"), **extra)


@pytest.fixture
def dnsnet(podman, tmp_path):  # noqa: F811
    node = HelperNode(tmp_path / "node", cache_dir=LIBCNI_DIR)
    log = open(tmp_path / "cnmd.log", "wb")
    sock = os.path.join(node.work, "cnmd.sock")
    helper = subprocess.Popen(["nsenter", f"--net={node.host}", "--", os.path.join(BIN, "cnmd"), "--socket", sock],
                              env=node.env(), stdout=log, stderr=log)
    wait_listening(sock, helper, log=str(tmp_path / "cnmd.log"))
    conflist = adapt(load_shipped("podman/cnm.conflist"), unique("cnmdns", 30), unique("cnp"), node.data_dir,
                     subnet=random_subnet())
    conflist["plugins"][0].update(dnsEnabled=True, dnsDomain="pod.test", dnsUpstreams=[])
    conflist["plugins"][0]["capabilities"]["aliases"] = True
    network = node.add_network(conflist)
    podman.configure(node)
    net = Net(podman, node, network)
    yield net
    net.run("rm", "--all", "--force", "--time", "0", check=False)
    helper.terminate()
    helper.wait(timeout=60)
    log.close()
    node.cleanup()


def test_containers_resolve_each_other_by_name_and_alias(dnsnet):
    net = dnsnet
    web = unique("web", 20)
    net.run("run", "-d", "--network", net.name, "--name", web, "--network-alias", "www", IMAGE,
            "httpd", "-f", "-p", "80", "-h", "/www")
    web_ip = net.ip_of(web)
    for name in (web, "www", f"{web}.pod.test"):
        out = net.run("run", "--rm", "--network", net.name, IMAGE, "nslookup", name, net.gateway).stdout
        assert web_ip in out, (name, out)
    out = net.run("run", "--rm", "--network", net.name, IMAGE, "wget", "-q", "-O-", f"http://{web}/").stdout
    assert "hello from cnm-cni" in out
