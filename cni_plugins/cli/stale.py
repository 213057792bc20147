"""Read-only view of stale state: exactly what a node-wide `cnmctl gc` would do
(reconcile.plan()), for `cnmctl doctor`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Stale:
    kind: str  # release | finish | homeless | empty | pin | veth | nft | unknown | untagged
    name: str
    why: str
    removable: bool  # False: reported only (never removed by `cnmctl gc`)


def scan(state_dir: str, env=None) -> list[Stale]:
    from ..node import Node
    from ..reconcile import plan

    env = os.environ if env is None else env
    return [Stale(a.kind, a.name, a.error or a.detail, not a.report_only) for a in plan(Node(state_dir, env))]
