"""The shipped bundle: packaging/build.sh (PyInstaller, one build per run), install.sh into a
temporary PREFIX, the installed plugins working without the checkout's Python (in-process and
through the bundle's own cnmd), and uninstall.sh removing exactly what was installed.
Upgrades in place: test_upgrade.py.

Slow (one PyInstaller build, shared with test_upgrade.py): marked `slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from support.bundle import CLEAN_PATH, build
from support.common import unique, wait_listening

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build("A", tmp_path_factory)


def tree(path) -> set[str]:
    found = set()
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(base, name), path))
    return found


def exec_installed(prefix, plugin, command, conf, **env):
    """A runtime's exec: a clean environment, no Python on PATH needed, no checkout involved."""
    full = {"PATH": CLEAN_PATH, "CNI_COMMAND": command, "CNI_PATH": str(prefix), **env}
    proc = subprocess.run([os.path.join(prefix, plugin)], input=json.dumps(conf).encode(), env=full,
                          capture_output=True, timeout=120, cwd="/")
    return proc.returncode, proc.stdout, proc.stderr


def test_bundle_layout(bundle):
    exe = bundle / "cnm-cni" / "cnm"
    assert exe.is_file() and os.access(exe, os.X_OK)
    for link in ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-ipam", "loopback", "cnmd", "cnmctl"):
        assert os.readlink(bundle / "cnm-cni" / link) == "cnm"
    assert (bundle / "cnm-cni" / "_internal" / "cnm-build-id").is_file()
    for script in ("install.sh", "uninstall.sh"):
        assert os.access(bundle / script, os.X_OK)
    assert (bundle / "conf" / "systemd" / "cnmd.socket").is_file()


def test_install_run_uninstall(bundle, tmp_path, netns):
    root = tmp_path / "root"
    prefix, netconf, sbin, units = root / "opt/cni/bin", root / "etc/cni/net.d", root / "sbin", root / "units"
    prefix.mkdir(parents=True)
    (prefix / "bridge").write_text("someone else's plugin\n")  # must survive install + uninstall
    before = tree(root)
    conflist = tmp_path / "10-cnm.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "cnm-none"}]}))
    install = [str(bundle / "install.sh"), "--prefix", str(prefix), "--conflist", str(conflist),
               "--netconf-dir", str(netconf), "--loopback", "--cnmctl-link", str(sbin),
               "--systemd", "--systemd-dir", str(units), "--no-enable"]
    proc = subprocess.run(install, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    exe = os.path.realpath(prefix / "cnm-cni" / "cnm")
    assert exe.startswith(f"{prefix}/.cnm-cni/") and os.path.isfile(exe)
    for plugin in ("cnm-bridge", "cnm-host", "cnm-none", "cnm-container", "cnm-ipam", "loopback"):
        assert os.path.realpath(prefix / plugin) == exe
    assert (netconf / "10-cnm.conflist").read_text() == conflist.read_text()
    assert os.path.realpath(sbin / "cnmctl") == exe
    assert f"ExecStart={prefix}/.cnm-cni/current/cnmd" in (units / "cnmd.service").read_text()
    assert (prefix / "bridge").read_text() == "someone else's plugin\n"

    # A second install refuses nothing: it replaces ours. A foreign file in the way is refused.
    assert subprocess.run(install, capture_output=True, timeout=300).returncode == 0
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "cnm-none").write_text("not ours")
    refused = subprocess.run([str(bundle / "install.sh"), "--prefix", str(foreign)], capture_output=True)
    assert refused.returncode != 0 and b"not from this install" in refused.stderr
    assert sorted(os.listdir(foreign)) == ["cnm-none"]

    # The installed plugins work from a clean environment: VERSION, about, ADD/CHECK/DEL in-process.
    rc, out, _ = exec_installed(prefix, "cnm-none", "VERSION", {"cniVersion": "0.4.0"}, CNM_HELPER_SOCKET="off")
    assert rc == 0 and json.loads(out)["cniVersion"] == "0.4.0"
    about = subprocess.run([str(prefix / "cnm-bridge")], env={"PATH": CLEAN_PATH}, capture_output=True)
    assert about.returncode == 0 and b"cnm-bridge (cnm-cni" in about.stderr
    assert subprocess.run([str(sbin / "cnmctl"), "--help"], capture_output=True, env={"PATH": CLEAN_PATH}).returncode == 0
    ns = netns()
    conf = {"cniVersion": "1.0.0", "name": unique("bn"), "type": "cnm-none"}
    attach = dict(CNI_CONTAINERID=unique("c"), CNI_NETNS=ns, CNI_IFNAME="eth0", CNM_STATE_DIR=str(tmp_path / "st"),
                  CNM_RUN_DIR=str(tmp_path / "run"))
    rc, out, err = exec_installed(prefix, "cnm-none", "ADD", conf, CNM_HELPER_SOCKET="off", **attach)
    assert rc == 0, (out, err)
    assert json.loads(out)["interfaces"][0]["name"] == "lo"
    assert exec_installed(prefix, "cnm-none", "DEL", conf, CNM_HELPER_SOCKET="off", **attach)[0] == 0

    # The bundle's own helper serves the installed plugins.
    sock = str(tmp_path / "cnmd" / "cnmd.sock")
    log = tmp_path / "cnmd.log"
    with open(log, "wb") as logf:
        helper = subprocess.Popen([str(prefix / "cnm-cni" / "cnmd"), "--socket", sock], stdout=logf, stderr=logf,
                                  env={"PATH": CLEAN_PATH})
    try:
        wait_listening(sock, helper, timeout=60, log=log)
        for command in ("ADD", "CHECK", "DEL"):
            c = dict(conf, prevResult=json.loads(out)) if command == "CHECK" else conf
            rc, o, err = exec_installed(prefix, "cnm-none", command, c, CNM_HELPER_SOCKET=sock, **attach)
            assert rc == 0, (command, o, err)
    finally:
        helper.terminate()
        assert helper.wait(timeout=60) == 0
    assert "stopped after 3 requests" in log.read_text()

    proc = subprocess.run([str(prefix / "cnm-cni" / "uninstall.sh")], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert tree(root) == before  # exactly what was installed is gone, nothing else


def test_socket_activation(bundle, tmp_path, netns):
    """cnmd takes the listening socket from systemd (LISTEN_FDS), as cnmd.socket hands it over."""
    sock = str(tmp_path / "act.sock")
    cnmd = str(bundle / "cnm-cni" / "cnmd")
    activator = subprocess.Popen(["systemd-socket-activate", "-l", sock, cnmd], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ns = netns()
        conf = {"cniVersion": "1.0.0", "name": unique("bn"), "type": "cnm-none"}
        attach = dict(CNI_CONTAINERID=unique("c"), CNI_NETNS=ns, CNI_IFNAME="eth0",
                      CNM_STATE_DIR=str(tmp_path / "st"), CNM_RUN_DIR=str(tmp_path / "run"), CNM_HELPER_SOCKET=sock)
        for command in ("ADD", "DEL"):
            rc, out, err = exec_installed(bundle / "cnm-cni", "cnm-none", command, conf, **attach)
            assert rc == 0, (out, err)
    finally:
        activator.terminate()
        _, err = activator.communicate(timeout=60)
    assert b"serving on the systemd socket" in err
    assert b"stopped after 2 requests" in err


RECORDING_IPAM = """#!/bin/sh
# A delegated IPAM plugin that records the environment the bundle's plugin gave it.
env > "$(dirname "$0")/env.$CNI_COMMAND.$$"
cat > /dev/null
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.251.7.2/24", "gateway": "10.251.7.1"}]}'
exit 0
"""


def test_delegated_ipam_sees_the_runtime_environment(bundle, tmp_path, netns):
    """The bootloader's LD_LIBRARY_PATH (its _internal/) and _PYI_* variables never reach a
    delegated plugin; the runtime's own LD_LIBRARY_PATH does. In-process and through the bundle's
    helper: the bundle's bootstrap imports no os, so the thin path restores them through posix."""
    ipam_dir = tmp_path / "ipam-bin"
    ipam_dir.mkdir()
    (ipam_dir / "recipam").write_text(RECORDING_IPAM)
    (ipam_dir / "recipam").chmod(0o755)
    host = netns()  # the bridge lives and dies with this throwaway "host" netns
    sock = str(tmp_path / "cnmd.sock")
    log = tmp_path / "cnmd.log"
    with open(log, "wb") as logf:
        helper = subprocess.Popen(["nsenter", f"--net={host}", "--", str(bundle / "cnm-cni" / "cnmd"), "--socket", sock],
                                  stdout=logf, stderr=logf, env={"PATH": CLEAN_PATH})
    try:
        wait_listening(sock, helper, timeout=60, log=log)
        for path in ("off", sock):
            conf = {"cniVersion": "1.0.0", "name": unique("bn"), "type": "cnm-bridge", "bridge": unique("cnb"),
                    "ipam": {"type": "recipam"}}
            env = {"PATH": CLEAN_PATH, "CNI_PATH": f"{bundle / 'cnm-cni'}:{ipam_dir}", "CNI_CONTAINERID": unique("c"),
                   "CNI_NETNS": netns(), "CNI_IFNAME": "eth0", "CNM_STATE_DIR": str(tmp_path / "st"),
                   "CNM_RUN_DIR": str(tmp_path / "run"), "CNM_HELPER_SOCKET": path, "LD_LIBRARY_PATH": "/runtime/lib"}
            for command in ("ADD", "DEL"):
                proc = subprocess.run(["nsenter", f"--net={host}", "--", str(bundle / "cnm-cni" / "cnm-bridge")],
                                      input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND=command),
                                      capture_output=True, timeout=120, cwd="/")
                assert proc.returncode == 0, (path, command, proc.stdout, proc.stderr)
                (recorded,) = ipam_dir.glob(f"env.{command}.*")
                seen = dict(line.split("=", 1) for line in recorded.read_text().splitlines() if "=" in line)
                recorded.unlink()
                assert seen["LD_LIBRARY_PATH"] == "/runtime/lib", (path, command)
                assert "LD_LIBRARY_PATH_ORIG" not in seen and not [k for k in seen if k.startswith("_PYI_")], seen
                assert seen["CNI_COMMAND"] == command and seen["CNI_CONTAINERID"] == env["CNI_CONTAINERID"]
    finally:
        helper.terminate()
        assert helper.wait(timeout=60) == 0
    assert "stopped after 2 requests" in log.read_text()


def test_bundled_helper_serves_names(bundle, tmp_path, netns):
    """Issue 14 item 5: the bundle's cnmd serves a DNS-enabled network's names (dnspython and
    the record types it imports by name are in the bundle): A, AAAA, PTR, from a container."""
    import dns.message
    import dns.query
    import dns.reversename

    from support.common import in_netns

    host, ns = netns(), netns()
    sock = str(tmp_path / "cnmd.sock")
    log = tmp_path / "cnmd.log"
    run_dir = str(tmp_path / "run")
    with open(log, "wb") as logf:
        helper = subprocess.Popen(["nsenter", f"--net={host}", "--", str(bundle / "cnm-cni" / "cnmd"), "--socket", sock],
                                  stdout=logf, stderr=logf, env={"PATH": CLEAN_PATH, "CNM_RUN_DIR": run_dir})
    try:
        wait_listening(sock, helper, timeout=60, log=log)
        name = unique("bn")
        conf = {"cniVersion": "1.0.0", "name": name, "type": "cnm-bridge", "bridge": unique("cnb"),
                "isGateway": True, "dnsEnabled": True, "dnsDomain": "bundle.test", "dnsUpstreams": [],
                "runtimeConfig": {"aliases": {name: ["web"]}},
                "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                         "ranges": [[{"subnet": "10.251.9.0/24"}], [{"subnet": "fd59::/64"}]]}}
        env = {"PATH": CLEAN_PATH, "CNI_PATH": f"{bundle / 'cnm-cni'}:/usr/lib/cni", "CNI_CONTAINERID": unique("c"),
               "CNI_NETNS": ns, "CNI_IFNAME": "eth0", "CNM_STATE_DIR": str(tmp_path / "st"), "CNM_RUN_DIR": run_dir,
               "CNM_HELPER_SOCKET": sock, "CNI_COMMAND": "ADD"}
        proc = subprocess.run(["nsenter", f"--net={host}", "--", str(bundle / "cnm-cni" / "cnm-bridge")],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120, cwd="/")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        ips = {4 if ":" not in ip["address"] else 6: ip["address"].split("/")[0] for ip in json.loads(proc.stdout)["ips"]}

        def ask(qname, rdtype):
            reply = dns.query.udp(dns.message.make_query(qname, rdtype), "10.251.9.1", timeout=10)
            return sorted(r.to_text() for rrset in reply.answer for r in rrset)

        assert in_netns(ns, ask, "web.bundle.test.", "A") == [ips[4]]
        assert in_netns(ns, ask, "web.bundle.test.", "AAAA") == [ips[6]]
        assert in_netns(ns, ask, dns.reversename.from_address(ips[4]).to_text(), "PTR") == ["web.bundle.test."]
        proc = subprocess.run(["nsenter", f"--net={host}", "--", str(bundle / "cnm-cni" / "cnm-bridge")],
                              input=json.dumps(conf).encode(), env=dict(env, CNI_COMMAND="DEL"), capture_output=True,
                              timeout=120, cwd="/")
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
    finally:
        helper.terminate()
        assert helper.wait(timeout=60) == 0
    text = log.read_text()
    assert f"dns {name}: serving on 10.251.9.1, fd59::1" in text and "no name service" not in text, text
