"""`cnmctl run` on a DNS-enabled network (issue 14 item 4): the sandbox's
/etc/netns/<NAME>/resolv.conf from the ADD result, so `ip netns exec client getent hosts web`
resolves through the network's name server (served by a helper running in the node's host
netns); `cnmctl rm` removes it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from harness.conflists import bridge_conflist
from harness.host import BIN, sh
from harness.node import Node

from cni_plugins.linux import netns as nsmod
from conftest import unique, wait_listening


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    conflist = bridge_conflist(unique("cnmdns", 30), unique("cnq"), "10.62.9.0/24", node.data_dir)
    conflist["plugins"][0].update(dnsEnabled=True, dnsDomain="ctl.test", dnsUpstreams=[])
    node.net = node.add_network(conflist)
    node.sock = str(tmp_path / "cnmd.sock")
    log = open(tmp_path / "cnmd.log", "wb")
    helper = subprocess.Popen(["nsenter", f"--net={node.host}", "--", os.path.join(BIN, "cnmd"), "--socket", node.sock],
                              env=node.env(), stdout=log, stderr=log)
    wait_listening(node.sock, helper, log=str(tmp_path / "cnmd.log"))
    node.names = []
    yield node
    for name in node.names:
        if os.path.exists(f"/run/netns/{name}"):
            node.cnmctl("rm", name, check=False, CNM_HELPER_SOCKET=node.sock, CNI_PATH=BIN)
            if os.path.exists(f"/run/netns/{name}"):
                nsmod.remove_named(name)
        subprocess.run(["rm", "-rf", f"/etc/netns/{name}"])
    helper.terminate()
    helper.wait(timeout=60)
    log.close()
    node.cleanup()


def test_run_writes_resolv_conf_and_names_resolve_with_getent(node):
    web, client = unique("web", 20), unique("client", 20)
    node.names += [web, client]
    run = lambda *a: node.cnmctl(*a, CNM_HELPER_SOCKET=node.sock, CNI_PATH=BIN)  # noqa: E731
    web_result = json.loads(run("run", web, "--network", node.net.name).stdout)
    run("run", client, "--network", node.net.name)
    web_ip = web_result["ips"][0]["address"].split("/")[0]
    resolv = f"/etc/netns/{client}/resolv.conf"
    text = open(resolv).read()
    assert "nameserver 10.62.9.1\n" in text and "search ctl.test\n" in text
    out = sh("ip", "netns", "exec", client, "getent", "hosts", web).stdout
    assert out.split()[0] == web_ip, out
    out = sh("ip", "netns", "exec", client, "getent", "hosts", f"{web}.ctl.test").stdout
    assert out.split()[0] == web_ip, out
    run("rm", web)
    assert not os.path.exists(f"/etc/netns/{web}")
    # gone from the network's names as soon as rm returned
    assert sh("ip", "netns", "exec", client, "getent", "hosts", web, check=False).returncode == 2
    run("rm", client)
    assert not os.path.exists(resolv) and not os.path.exists(f"/etc/netns/{client}")
