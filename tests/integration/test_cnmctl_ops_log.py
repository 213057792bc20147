"""The plugin log over real bridge ADD/CHECK/DEL in a throwaway host netns: one line per
command naming command, container, network and ifname, with outcome and duration, on
both the in-process and the resident-helper path (CNM_TEST_HELPER=1 runs this file there)."""

from __future__ import annotations

import json
import re

import pytest

from support.bridge import Lab, with_prev


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def fields(line: str) -> dict[str, str]:
    """logfmt -> dict (JSON-quoted values decoded), as tests/unit/test_log.py."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}


@pytest.fixture
def lab(netns, cnm_env, tmp_path):
    lab = Lab(netns, cnm_env, tmp_path)
    lab.log = tmp_path / "cnm.log"
    lab.env = dict(cnm_env, CNM_LOG_FILE=str(lab.log))
    return lab


def ours(lab) -> list[dict]:
    return [fields(line) for line in lines(lab.log) if fields(line).get("plugin") == "cnm-bridge"]


def test_add_check_del_each_log_one_line(lab):
    ns = lab.container()
    conf = lab.conf()
    result = lab.add(conf, ns, cid="pod1", ifname="eth1")
    assert lab.run("CHECK", with_prev(conf, result), ns, cid="pod1", ifname="eth1").rc == 0
    assert lab.run("DEL", conf, ns, cid="pod1", ifname="eth1").rc == 0
    events = ours(lab)
    assert [e["command"] for e in events] == ["ADD", "CHECK", "DEL"]
    for e in events:
        assert (e["container"], e["network"], e["ifname"], e["netns"]) == ("pod1", lab.network, "eth1", ns)
        assert e["outcome"] == "ok" and e["level"] == "info" and float(e["duration_ms"]) > 0
    lab.assert_nothing_left()


def test_failed_add_logs_its_error_and_leaves_nothing(lab):
    ns = lab.container()
    lab.add(lab.conf(), ns, cid="pod1")
    # the same attachment with another config: a conflict (the same ADD again is a retry: its result)
    again = lab.run("ADD", lab.conf(ipMasq=True), ns, cid="pod1")
    assert again.rc != 0
    [ok, failed] = ours(lab)
    assert ok["outcome"] == "ok" and failed["outcome"] == "error" and failed["level"] == "error"
    assert int(failed["code"]) == again.json["code"] and failed["msg"] == again.json["msg"]
    assert failed["details"] == again.json["details"] and failed["container"] == "pod1"
    assert lab.run("DEL", lab.conf(), ns, cid="pod1").rc == 0
    lab.assert_nothing_left()


def test_per_network_log_file(lab, tmp_path):
    own = tmp_path / "network.log"
    conf = lab.conf(logFile=str(own))
    ns = lab.container()
    lab.add(conf, ns)
    assert lab.run("DEL", conf, ns).rc == 0
    assert [fields(l)["command"] for l in lines(own)] == ["ADD", "DEL"]
    assert ours(lab) == []
