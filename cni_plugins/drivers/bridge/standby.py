"""Published ports that wait for another store's endpoint of the same container.

One container may publish a host port on networks of different stores (each its own
stateDir). The kernel holds one element per key, installed by the endpoint that published
first (ports.py); a later endpoint of the same container in another store records its own
elements without installing them, but the owner's store cannot read that record. So the
later one also enlists here the elements it waits to install, and any DEL that frees the
key (of whichever store) installs the earliest enlisted one's elements in the same nft
transaction that removes its own: the port keeps answering while one of the container's
endpoints that published it lives.

Kept where every store's process sees it, beside the netns pins in the run dir (tmpfs: a
reboot empties it with the namespaces), per network namespace of the nft tables:
`RUN_DIR/ports/<netns dev>-<netns ino>/<owner tag>`, JSON {container, published_at,
elements}. An entry goes when its endpoint is DELed (or its ADD undone), or when it gets
its keys. Every change is made under the node lock "ports", so entries and the kernel's
published ports change together; the directory of a namespace goes with its last entry.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ...cnm import pins
from ...linux import netns
from ...linux.fs import make_dirs
from . import ports

SUBDIR = "ports"


@dataclass(frozen=True)
class Waiting:
    owner: str  # the owner tag its elements will carry
    container: str  # the container id as its elements' comments carry it
    published_at: int  # when it published (time_ns): the earliest enlisted gets a key first
    elements: list  # nft Elements of its published ports that another store's endpoint holds


def _directory(env: Mapping[str, str]) -> str:
    ns = netns.own_identity()
    return os.path.join(pins.run_dir(env), SUBDIR, f"{ns.dev}-{ns.ino}")


def enlist(env: Mapping[str, str], owner: str, container: str, published_at: int, elements: list) -> None:
    """`owner` (an endpoint of `container`) waits to install `elements`."""
    directory = _directory(env)
    make_dirs(directory, 0o700)
    entry = {"container": container, "published_at": published_at,
             "elements": [[e.family, e.set, e.key, e.data, e.note] for e in elements]}
    path = os.path.join(directory, owner)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(entry).encode())
    finally:
        os.close(fd)
    os.replace(path + ".tmp", path)


def withdraw(env: Mapping[str, str], owner: str) -> bool:
    """`owner` waits no more (its DEL, or the undo of its ADD); was it waiting?"""
    directory = _directory(env)
    try:
        os.unlink(os.path.join(directory, owner))
    except FileNotFoundError:
        return False
    _remove_if_empty(directory)
    return True


def waiting(env: Mapping[str, str], container: str) -> list[Waiting]:
    """The endpoints of `container` (of any store) waiting in this namespace: usually
    none, and then one failed directory listing is the whole cost."""
    from ...linux.nft import Element

    directory = _directory(env)
    try:
        names = [n for n in os.listdir(directory) if not n.endswith(".tmp")]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(directory, name)) as f:
                entry = json.load(f)
            if entry["container"] != container:
                continue
            out.append(Waiting(name, container, int(entry["published_at"]), [Element(*e) for e in entry["elements"]]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # gone meanwhile, or not an entry of ours: never a reason to fail a DEL
    return out


def took(env: Mapping[str, str], entry: Waiting, installed: list) -> None:
    """`entry` got the keys of `installed`: it waits only for the rest, if any."""
    got = {ports.slot(e) for e in installed}
    rest = [e for e in entry.elements if ports.slot(e) not in got]
    if not rest:
        withdraw(env, entry.owner)
        return
    enlist(env, entry.owner, entry.container, entry.published_at, rest)


def _remove_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
