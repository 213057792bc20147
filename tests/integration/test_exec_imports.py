"""A plugin exec without the resident helper imports what its command needs, no more (atk22,
finding 2): moving imports to module top made every cnm-bridge exec import pyroute2's
ctnetlink client (asyncio and ssl with it, tens of ms) though only a UDP port's conntrack
flush uses it, and every cnm-ipam exec import the helper's lease index (ctypes, inotify).
Run in a throwaway netns, with private state."""

from __future__ import annotations

import json
import os
import subprocess

from support.common import BIN

PYTHON = "/usr/bin/python3"  # the interpreter of bin/cnm's shebang
NOT_FOR_EVERY_EXEC = {"pyroute2.conntrack", "asyncio", "ssl", "cni_plugins.linux.inotify", "cni_plugins.ipam.index"}
NOT_FOR_AN_IPAM_EXEC = NOT_FOR_EVERY_EXEC | {"ctypes"}  # (the bridge's netns calls need ctypes)


def imported(plugin: str, command: str, conf: dict, tmp_path, host: str) -> set[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNM_HELPER_SOCKET": "off", "CNI_COMMAND": command,
           "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/nonexistent/netns", "CNI_PATH": BIN,
           "CNM_STATE_DIR": str(tmp_path / "state"), "CNM_RUN_DIR": str(tmp_path / "run"),
           "CNM_LOG_FILE": str(tmp_path / "cnm.log")}
    proc = subprocess.run(["nsenter", f"--net={host}", "--", PYTHON, "-IS", "-X", "importtime",
                           os.path.join(BIN, plugin)], input=json.dumps(conf).encode(), env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-2000:])
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines()
            if line.startswith("import time:") and "|" in line}


def test_bridge_del_and_ipam_del_import_no_more_than_they_use(netns, tmp_path):
    host = netns("cnmh")
    ipam = {"type": "cnm-ipam", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": "10.250.0.0/24"}]]}
    bridge = {"cniVersion": "1.1.0", "name": "net1", "type": "cnm-bridge", "bridge": "cnbimports", "ipam": ipam}
    modules = imported("cnm-bridge", "DEL", bridge, tmp_path, host)
    assert "cni_plugins.drivers.bridge.driver" in modules  # the measurement itself works
    assert not modules & NOT_FOR_EVERY_EXEC, sorted(modules & NOT_FOR_EVERY_EXEC)
    modules = imported("cnm-ipam", "DEL", dict(bridge, type="cnm-ipam"), tmp_path, host)
    assert "cni_plugins.ipam.disk" in modules
    assert not modules & NOT_FOR_AN_IPAM_EXEC, sorted(modules & NOT_FOR_AN_IPAM_EXEC)
