"""`cnmctl gc NETWORK`: DEL the cached attachments of NETWORK whose namespace is gone.

Without the runtime's list of valid attachments, only attachments whose netns is provably
gone are DELed (runtime/collect.py); the others are kept, and every one is reported with
the reason. `--dry-run` only reports; `--all` is cnitool's GC (every cached attachment
of the network, running containers included, then each plugin's GC without a list).
Exit 0 when every DEL succeeded, 1 when one failed (listed).
"""

from __future__ import annotations

import os
import sys

from ..runtime import collect
from .table import emit_json, render


def run(opts, net, runner) -> int:
    if opts.all:
        outcomes, plugin_errors = collect.collect_all(runner, net)
    else:
        outcomes, plugin_errors = collect.collect_gone(runner, net, os.environ, dry_run=opts.dry_run), []
    if opts.format == "json":
        emit_json({"network": net.name, "attachments": [o.as_json() for o in outcomes],
                   "pluginErrors": plugin_errors})
    else:
        sys.stdout.write(report(net.name, outcomes, plugin_errors, runner.cache_dir))
    failed = plugin_errors or any(o.action == collect.FAILED for o in outcomes)
    return 1 if failed else 0


def report(network: str, outcomes, plugin_errors, cache_dir: str) -> str:
    if not outcomes:
        text = f"no cached attachment of network {network!r} in {os.path.join(cache_dir, 'results')}\n"
    else:
        rows = [[o.action, o.container_id, o.ifname, o.netns, o.reason + (f": {o.error}" if o.error else "")]
                for o in outcomes]
        text = render(["action", "container", "ifname", "netns", "why"], rows)
    return text + "".join(f"plugin GC failed: {e}\n" for e in plugin_errors)
