"""The helper's garbage collector: what preload leaves alive is frozen out of every collection,
automatic collections are rare, and the helper collects the young generations itself when idle
(cli/cnmd.py). Run in a fresh interpreter: freezing is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

from support.common import ROOT

CODE = """
import gc, json
from cni_plugins.cli import cnmd
cnmd.preload()
frozen = gc.get_freeze_count()
thresholds = gc.get_threshold()
runs = []
gc.callbacks.append(lambda phase, info: phase == "stop" and runs.append(info["generation"]))
junk = []
for i in range(5000):  # cyclic garbage, as requests leave it
    a = {}; a["self"] = a; junk.append(a)
del junk, a
automatic = list(runs)
collected = cnmd.collect_when_idle()
idle = runs[len(automatic):]
gc.collect()
few = cnmd.collect_when_idle()  # nothing new to collect: no collection
print(json.dumps({"frozen": frozen, "thresholds": thresholds, "automatic": automatic, "idle": idle,
                  "collected": collected, "few": few}))
"""


def test_preload_freezes_and_idle_collects():
    proc = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["frozen"] > 10000  # pydantic, pyroute2 and our modules: never scanned again
    assert tuple(got["thresholds"]) == (20000, 20, 20)
    assert got["automatic"] == []  # 5,000 new containers set off no collection
    assert got["idle"] == [1] and got["collected"]  # the idle collection of the young generations
    assert got["few"] is False  # below IDLE_COLLECT_AT young objects the helper does not collect
