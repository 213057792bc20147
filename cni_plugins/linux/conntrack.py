"""Flush conntrack entries (the `conntrack` tool from the conntrack package).

A UDP "connection" lives as long as packets keep coming: an entry made before a
port was published (or after it went) keeps steering the flow to the old place.
"""

from __future__ import annotations

import subprocess

CONNTRACK = "conntrack"
TIMEOUT_S = 30


class ConntrackError(Exception):
    """conntrack could not be run."""


def flush_udp_port(port: int, version: int) -> None:
    """Delete every UDP entry whose original destination port is `port` (best effort:
    "no entry matched" is success)."""
    argv = [CONNTRACK, "-D", "-f", "ipv4" if version == 4 else "ipv6", "-p", "udp", "--orig-port-dst", str(port)]
    try:
        subprocess.run(argv, capture_output=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConntrackError(f"cannot run conntrack: {exc}") from None
