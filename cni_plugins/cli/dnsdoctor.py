"""`cnmctl doctor`: a DNS-enabled network whose name server is not running.

The records say where each network's server listens (drivers/dns/names.py); a UDP socket
bound there, in this namespace, is the server (run by the resident helper). A query cannot
tell: from the host, a packet to the gateway address arrives on `lo`, and the server hears
only its bridge.
"""

from __future__ import annotations

from typing import Iterator

from ..cnm.store import Reader, StoreError
from ..drivers.dns import names
from ..drivers.dns.zone import read
from ..linux import procnet
PORT = 53
FIX = ("start the resident helper (`cnmctl daemon` or the cnmd systemd unit): it serves the names of every "
       "DNS-enabled network from the store")


def problems(state_dir: str) -> Iterator[tuple[str, str, str]]:
    """(severity, message, fix) per DNS-enabled network with live endpoints."""
    try:
        reader = Reader(state_dir)
        try:
            with reader.transaction() as tx:
                networks = [(net.name, read(tx, net.name)) for net in tx.list_networks()
                            if net.options.get(names.OPTIONS_KEY)]
        finally:
            reader.close()
    except (StoreError, Exception):  # noqa: BLE001 -- no store yet, or unreadable: the state check says so
        return
    bound = procnet.udp_listeners(PORT)
    for network, records in networks:
        if records.empty:
            continue
        missing = sorted(address for address, _ in records.listen if address not in bound)
        if missing:
            yield ("error", f"network {network} has DNS enabled but no name server listens on "
                            f"{', '.join(missing)} port {PORT}: its containers resolve no names", FIX)
        else:
            yield "ok", f"network {network}: name server on {', '.join(sorted(a for a, _ in records.listen))}", ""
