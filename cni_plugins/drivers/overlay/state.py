"""This node's overlay networks on disk: one file per network under <stateDir>/overlay/,
holding the lease the node holds (subnet, etcd lease id, VTEP), what the underlay allows
(MTU), when the lease was last confirmed with etcd, and the store settings to reach etcd
with (endpoints and file paths only: never a secret).

An ADD reads it and nothing else when the lease is fresh (the resident helper refreshes it
while it keeps the lease alive): no etcd round trip on the hot path. The helper lists these
files to know which networks it serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time

from ...linux.fs import make_dirs

DIRECTORY = "overlay"
LOCK_WAIT_S = 10.0  # for a network's file lock
_observer = None  # observe()


def observe(callback) -> None:
    """Have `callback(state_dir, network)` called after every write of a network's file, in
    the writing thread (the resident helper starts keeping a network's lease and mesh the
    moment an ADD claims it); None stops it. It must be cheap and must not raise."""
    global _observer
    _observer = callback


def directory(state_dir: str) -> str:
    return os.path.join(state_dir, DIRECTORY)


def ipam_dir(state_dir: str) -> str:
    """The pods' address leases (cnm-ipam, host-local's format), node-local like the rest."""
    return os.path.join(directory(state_dir), "ipam")


def path(state_dir: str, network: str) -> str:
    # (a network name is a CNI name, but the file name need not trust that)
    tag = hashlib.sha256(network.encode()).hexdigest()[:16]
    return os.path.join(directory(state_dir), f"{tag}.json")


def read(state_dir: str, network: str) -> dict | None:
    return read_file(path(state_dir, network), network)


def read_file(file: str, network: str | None = None) -> dict | None:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (network is not None and data.get("network") != network):
        return None
    return data


def write(state_dir: str, network: str, data: dict) -> None:
    """Atomically (a reader sees the old file or the new one)."""
    _update(state_dir, network, lambda _current: data)


def amend(state_dir: str, network: str, lease: int, wait: float = LOCK_WAIT_S, **fields) -> bool:
    """Set `fields` in the network's file if it still holds `lease` (the helper's keep-alive
    outcome): never over a file an ADD rewrote meanwhile with another lease."""
    return _update(state_dir, network, lambda current: dict(current, **fields)
                   if current is not None and current.get("lease") == lease else None, wait)


def restore(state_dir: str, network: str, data: dict) -> bool:
    """Write `data` as the network's file if there is none (it was removed by hand)."""
    return _update(state_dir, network, lambda current: data if current is None else None)


def _update(state_dir: str, network: str, change, wait: float = LOCK_WAIT_S) -> bool:
    """Replace the network's file by `change(current file or None)` unless that is None, under
    the file's lock; the observer hears of each write."""
    with _locked(state_dir, network, wait):
        data = change(read(state_dir, network))
        if data is None:
            return False
        _replace(state_dir, network, data)
    if _observer is not None:
        _observer(state_dir, network)
    return True


@contextlib.contextmanager
def _locked(state_dir: str, network: str, wait: float = LOCK_WAIT_S):
    """One writer of a network's file at a time, across threads and processes (a read-modify-
    write must not put back what another writer just replaced)."""
    make_dirs(directory(state_dir), 0o700)
    file = path(state_dir, network) + ".lock"
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:  # (writers hold it for one small file write: a holder past this is stuck)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{file}: held by another process for {wait:g} s") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)


def _replace(state_dir: str, network: str, data: dict) -> None:
    final = path(state_dir, network)
    tmp = f"{final}.{os.getpid()}.{threading.get_ident()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(dict(data, network=network), f, sort_keys=True)
    os.replace(tmp, final)


MACHINE_FILE = "machine-id"


def machine_id(state_dir: str) -> str:
    """This node store's own id (32 hex digits, random, made on first use): written into its
    lease records, it proves a record is this machine's whatever node name it carries."""
    file = os.path.join(directory(state_dir), MACHINE_FILE)
    try:
        with open(file, encoding="ascii") as f:
            ident = f.read().strip()
        if len(ident) == 32 and all(c in "0123456789abcdef" for c in ident):
            return ident
    except (OSError, UnicodeDecodeError):
        pass
    make_dirs(directory(state_dir), 0o700)
    ident = os.urandom(16).hex()
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w", encoding="ascii") as f:
        f.write(ident + "\n")
    try:
        os.link(tmp, file)  # (two first uses at once: the first one's id stands)
    except FileExistsError:
        os.unlink(tmp)
        return machine_id(state_dir)
    os.unlink(tmp)
    return ident


def remove(state_dir: str, network: str) -> bool:
    try:
        os.unlink(path(state_dir, network))
        return True
    except FileNotFoundError:
        return False


def all_networks(state_dir: str) -> list[dict]:
    try:
        names = sorted(os.listdir(directory(state_dir)))
    except OSError:
        return []
    found = []
    for name in names:
        if name.endswith(".json"):
            data = read_file(os.path.join(directory(state_dir), name))
            if data is not None and isinstance(data.get("network"), str):
                found.append(data)
    return found


def fresh(data: dict, ttl: int) -> bool:
    """Confirmed with etcd within half the lease's TTL (the helper refreshes it every third)."""
    return time.time() - float(data.get("confirmed", 0)) < ttl / 2


def store_down(data: dict, ttl: int) -> bool:
    """The helper found etcd unreachable at its last keep-alive, and that try is recent (the
    keeper tries every third of the TTL): an ADD need not wait on the same timeouts again."""
    since = float(data.get("unreachable", 0))
    return since > float(data.get("confirmed", 0)) and time.time() - since < ttl / 3 + 5


def expired(data: dict) -> bool:
    """Not confirmed with etcd for a whole lease TTL: the lease may have expired and its subnet
    gone to another node (etcd unreachable from here is no proof it is down for them)."""
    ttl = (data.get("settings") or {}).get("leaseTTL", 0)
    return time.time() - float(data.get("confirmed", 0)) >= ttl
