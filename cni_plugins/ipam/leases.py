"""host-local's lease files and who holds which address: the part of the lease store that
both the directory (disk.py) and the helper's index of it (index.py) need.

A lease is a file of the network's directory named after the address (canonical form),
holding "containerID\\r\\nifname" (a legacy file: only the container id).
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from .ranges import IP

LINE_BREAK = "\r\n"


class LeaseFiles(Protocol):
    """A lease directory as its readers see it (disk.LeaseDir)."""

    fd: int  # the directory's descriptor

    def names(self) -> list[str]: ...

    def read(self, name: str) -> bytes | None: ...


def is_lease_name(name: str) -> bool:
    """ip_of_name(name) is not None, without parsing: a canonical dotted quad by string checks,
    anything with a colon (IPv6, rare) by ip_of_name."""
    if not name or name[0] not in _FIRST_CHARS:
        return False
    if ":" in name:
        return ip_of_name(name) is not None
    parts = name.split(".")
    if len(parts) != 4:
        return False
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()):
            return False
        if part[0] == "0" and len(part) > 1 or int(part) > 255:
            return False
    return True


_FIRST_CHARS = "0123456789abcdefABCDEF:"


def ip_of_name(name: str) -> IP | None:
    """The address a lease file is named after, None for lock/last_reserved/other files."""
    if not name or name[0] not in _FIRST_CHARS:
        return None
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return None
    return addr if str(addr) == name else None


def owner_text(container_id: str, ifname: str) -> str:
    return container_id.strip() + LINE_BREAK + ifname


def parse_owner(content: str) -> tuple[str, str | None]:
    """(containerID, ifname) of a lease; ifname None for a legacy file holding only the id."""
    text = content.strip()
    if LINE_BREAK in text:
        cid, ifname = text.split(LINE_BREAK, 1)
        return cid, ifname
    return text, None


class Leases:
    """Who holds which address in one directory: lease file name -> (containerID, ifname or
    None for a legacy file), also grouped by container id. Names are canonical addresses
    (is_lease_name); files that cannot be read (a symlink, a directory) are not leases."""

    __slots__ = ("owners", "by_id", "_addrs")

    def __init__(self) -> None:
        self.owners: dict[str, tuple[str, str | None]] = {}
        self.by_id: dict[str, dict[str, str | None]] = {}
        self._addrs: dict[str, IP] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.owners

    def __len__(self) -> int:
        return len(self.owners)

    def put(self, name: str, owner: tuple[str, str | None]) -> None:
        self.discard(name)
        self.owners[name] = owner
        self.by_id.setdefault(owner[0], {})[name] = owner[1]

    def discard(self, name: str) -> None:
        owner = self.owners.pop(name, None)
        if owner is not None:
            held = self.by_id[owner[0]]
            del held[name]
            if not held:
                del self.by_id[owner[0]]

    def held_by(self, container_id: str) -> dict[str, str | None]:
        """The leases of a (stripped) container id: name -> ifname (None: legacy file)."""
        return self.by_id.get(container_id, {})

    def addr(self, name: str) -> IP:
        """The address of a lease name (parsed once)."""
        addr = self._addrs.get(name)
        if addr is None:
            addr = self._addrs[name] = ip_of_name(name)
            if len(self._addrs) > 2 * len(self.owners) + 64:  # names long gone
                self._addrs = {n: a for n, a in self._addrs.items() if n in self.owners}
        return addr

    def update_from(self, store: LeaseFiles, name: str) -> None:
        """Re-read one name of the directory."""
        data = store.read(name) if is_lease_name(name) else None
        if data is None:
            self.discard(name)
        else:
            self.put(name, parse_owner(data.decode(errors="replace")))


def scan(store: LeaseFiles) -> Leases:
    """Every lease of the directory: list it, read each file named like an address."""
    leases = Leases()
    for name in store.names():
        if is_lease_name(name):
            data = store.read(name)
            if data is not None:
                leases.put(name, parse_owner(data.decode(errors="replace")))
    return leases
