"""Read-only view of stale state and of what live endpoints lost: exactly what a node-wide
`cnmctl gc` would do (reconcile.plan()), for `cnmctl doctor`."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..node import Node
from ..reconcile import plan


@dataclass(frozen=True)
class Stale:
    kind: str  # release | finish | homeless | empty | pin | veth | nft | unknown | untagged
    name: str
    why: str
    removable: bool  # False: reported only (never removed by `cnmctl gc`)
    restores: bool = False  # a loss of live endpoints, which `cnmctl gc` puts back


def scan(state_dir: str, env=None) -> list[Stale]:
    env = os.environ if env is None else env
    return [Stale(a.kind, a.name, a.error or a.detail, not a.report_only, a.restores)
            for a in plan(Node(state_dir, env))]
