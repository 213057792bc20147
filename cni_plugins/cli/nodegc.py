"""`cnmctl gc` without NETWORK: the node-wide reconcile (cni_plugins/reconcile.py).

Removes what the store and the kernel disagree on -- endpoints of vanished netns, empty
sandboxes, pins, veths and nft elements of ours without a record, cnm-ipam leases
without an endpoint -- and prints what it removed (table, or --format json).
Store: $CNM_STATE_DIR (default /var/lib/cni/cnm); pins: $CNM_RUN_DIR/netns (default
/run/cnm/netns); veths and nft elements: the network namespace cnmctl runs in.
Exit 0 when everything stale was removed, 1 when some removal failed (listed).
"""

from __future__ import annotations

import json
import os
import sys

from ..cnm.store import state_dir


def run(opts) -> int:
    from ..controller import DEFAULT_RUN_DIR, RUN_DIR_ENV
    from ..reconcile import reconcile_node

    report = reconcile_node(state_dir(None, os.environ), os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR)
    if getattr(opts, "format", "table") == "json":
        sys.stdout.write(json.dumps(report.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(render(report))
    return 1 if report.errors else 0


def render(report) -> str:
    rows = [("KIND", "NAME", "WHY", "ERROR")]
    rows += [(a.kind, a.name, a.detail, a.error) for a in report.actions]
    if len(rows) == 1:
        return "nothing stale\n"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + ("  " + r[3] if r[3] else "") for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"
