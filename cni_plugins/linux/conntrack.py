"""Flush conntrack entries through ctnetlink (pyroute2's client: no `conntrack` tool needed).

A UDP "connection" lives as long as packets keep coming: an entry made before a
port was published (or after it went) keeps steering the flow to the old place.
"""

from __future__ import annotations

import errno
import socket

from pyroute2.netlink.exceptions import NetlinkError


class ConntrackError(Exception):
    """The conntrack table could not be read or changed; str() says why."""


def flush_udp_port(port: int, version: int) -> int:
    """Delete every UDP entry of this thread's netns whose original destination port is
    `port`, as `conntrack -D -p udp --orig-port-dst PORT` (a filtered dump, then a delete
    per entry: the kernel has no filtered flush before 6.3, and an older one would take the
    filter of a flush for "everything"). Returns how many were deleted; an entry gone
    meanwhile is not an error."""
    # pyroute2's ctnetlink client brings asyncio and ssl (~40-60 ms of a plugin exec): imported
    # only by an ADD or DEL that has UDP ports to flush, not on import of every bridge command
    from pyroute2.conntrack import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    family = socket.AF_INET if version == 4 else socket.AF_INET6
    wanted = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, dport=port)
    deleted = 0
    try:
        ct = Conntrack(nfgen_family=family)
        try:
            for entry in list(ct.dump_entries(tuple_orig=wanted)):
                try:
                    ct.entry("del", tuple_orig=entry.tuple_orig)
                    deleted += 1
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:
                        raise
        finally:
            ct.close()
    except Exception as exc:  # noqa: BLE001 - netlink, a kernel without ctnetlink, pyroute2 itself
        raise ConntrackError(f"cannot flush the UDP conntrack entries of port {port}: "
                             f"{type(exc).__name__}: {exc}") from None
    return deleted


def available() -> str | None:
    """None when this netns's conntrack table can be read through ctnetlink, else why not
    (for `cnmctl doctor`)."""
    from pyroute2.conntrack import Conntrack

    try:
        ct = Conntrack()
        try:
            ct.count()
        finally:
            ct.close()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"{type(exc).__name__}: {exc}"
    return None
