"""Names that other nodes hold on a network (an overlay's: the resident helper learns them from
etcd, cli/overlaynames.py), for this process's name servers: zone.py answers them after the
network's own names, which always win (a remote claim never shadows a local pod).

Per (store directory, network) one immutable snapshot; a new one replaces it whole, so a
server compares snapshots by identity, as it does the store's records.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RemoteNames:
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> addresses
    reverse: dict[str, str] = field(default_factory=dict)  # address -> the endpoint's first name


_lock = threading.Lock()
_boards: dict[tuple[str, str], RemoteNames] = {}


def key_of(directory: str, network: str) -> tuple[str, str]:
    return os.path.abspath(directory), network


def publish(directory: str, network: str, names: RemoteNames) -> None:
    with _lock:
        _boards[key_of(directory, network)] = names


def clear(directory: str, network: str) -> None:
    with _lock:
        _boards.pop(key_of(directory, network), None)


def current(key: tuple[str, str]) -> RemoteNames | None:
    """`key`: key_of()'s, computed once by the reader (this runs for every query)."""
    return _boards.get(key)  # (a dict read: atomic, no lock on the query path)
