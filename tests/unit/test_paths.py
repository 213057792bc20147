"""State paths named by a config: absolute, on a real filesystem (never /proc, /sys, /dev)."""

import pytest

from cni_plugins.cli.plugin import handle
from cni_plugins.cni.paths import state_path_problem


@pytest.mark.parametrize("path", ["relative", "", "/proc/self/cwd", "/proc/self/cwd/x", "/sys/fs", "/dev/shm/x",
                                  "/tmp/\0x", None, 5])
def test_pseudo_and_relative_paths_are_refused(path):
    assert state_path_problem(path)


def test_real_absolute_paths_are_fine(tmp_path):
    assert state_path_problem(str(tmp_path / "state")) is None


@pytest.mark.parametrize("key", ["stateDir", "dataDir"])
def test_a_config_naming_the_working_directory_writes_nothing_there(key, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = {"cniVersion": "1.1.0", "name": "net1", "type": "cnm-ipam",
            "ipam": {"type": "cnm-ipam", "ranges": [[{"subnet": "10.99.0.0/24"}]]}}
    if key == "stateDir":
        conf["stateDir"] = "/proc/self/cwd"
        plugin = "cnm-none"
        conf["type"] = "cnm-none"
    else:
        conf["ipam"]["dataDir"] = "/proc/self/cwd"
        plugin = "cnm-ipam"
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent", "CNI_IFNAME": "eth0",
           "CNM_STATE_DIR": str(tmp_path / "elsewhere"), "CNM_HELPER_SOCKET": "off"}
    import json
    response = handle(plugin, env, json.dumps(conf).encode())
    assert response.exit_code != 0
    assert json.loads(response.stdout)["code"] in (7, 8)
    assert [p.name for p in tmp_path.iterdir()] == []


@pytest.mark.parametrize("resolv", ["/dev/zero", "/nonexistent-resolv.conf"])
def test_resolvconf_must_be_a_small_regular_file(resolv, tmp_path):
    import json

    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "cnm-ipam",
            "ipam": {"type": "cnm-ipam", "dataDir": str(tmp_path / "data"),
                     "ranges": [[{"subnet": "10.98.0.0/24"}]], "resolvConf": resolv}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "dummy", "CNI_IFNAME": "eth0",
           "CNM_HELPER_SOCKET": "off", "CNM_LOG_FILE": str(tmp_path / "log")}
    response = handle("cnm-ipam", env, json.dumps(conf).encode())
    assert response.exit_code == 1
    assert json.loads(response.stdout)["code"] == 7
    leases = [p.name for p in (tmp_path / "data" / "net1").iterdir()] if (tmp_path / "data" / "net1").exists() else []
    assert not [name for name in leases if name[0].isdigit()]
