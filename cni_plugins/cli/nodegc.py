"""`cnmctl gc` without NETWORK: the node-wide reconcile of one store (cni_plugins/reconcile.py).

Removes what is provably this store's and provably stale -- endpoints of vanished or
abandoned network namespaces, what crashed commands left, empty sandboxes, this store's
pins, veths and nft elements without a record -- puts back what live endpoints lost (our
nftables layout and elements after a flush, a deleted table or chain: `restored`), and lists
what it kept and why (sandboxes it cannot judge from here, objects of older versions or
other stores).
Store: $CNM_STATE_DIR (default /var/lib/cni/cnm); pins: $CNM_RUN_DIR/netns/<store>
(default /run/cnm); veths and nft elements: the network namespace cnmctl runs in.
Exit 0 when everything stale was removed, 1 when some removal failed or a sweep could not look
(listed).
"""

from __future__ import annotations

import json
import os
import sys

from ..cnm.store import state_dir
from ..node import Node
from ..reconcile import reconcile_node


def run(opts) -> int:
    report = reconcile_node(Node(state_dir(None, os.environ), os.environ))
    if getattr(opts, "format", "table") == "json":
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    return 1 if report.errors else 0


def render(report) -> str:
    done = [a for a in report.actions if not a.report_only or a.error]
    kept = [a for a in report.actions if a.report_only and not a.error]
    out = _table([("KIND", "NAME", "WHY", "ERROR")] + [(a.kind, a.name, a.detail, a.error) for a in done]) \
        if done else "nothing stale\n"
    if kept:
        out += "\nkept (not provably stale, or not this store's):\n"
        out += _table([("KIND", "NAME", "WHY", "")] + [(a.kind, a.name, a.detail, "") for a in kept])
    return out


def _table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + ("  " + r[3] if r[3] else "") for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"
