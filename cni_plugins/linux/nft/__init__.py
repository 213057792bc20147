"""Our nftables tables (`table inet cnm`, `table bridge cnm`), in four modules with one job each:

    layout.py     what the tables hold: sets, maps, base chains and their rules
    elements.py   which elements an endpoint's options are, and their JSON commands
    tables.py     adding, removing, reading back and repairing them in the kernel
    backend.py    running nft: libnftables in process or the nft binary, chosen once per
                  process; the only reader of nft's messages (typed errors)

(generation.py and monitor.py watch the kernel's nftables changes, for the helper.)
This package's names are what the rest of the project uses.
"""

from .backend import NftError, NftExists, NftNotFound, NftUnavailable
from .elements import (SHARED_SETS, Element, Wanted, add_commands, binding_of, hairpin, isolate,
                       mac_spoof_check, masquerade, no_icc, noicc_published, owner_of, port_elements,
                       published_port)
from .layout import LAYOUT, LAYOUT_SET, TABLE, declare, marker
from .tables import (Damage, audit, can_create, commit, drifted_chains, elements_with_comments, list_json,
                     missing, owned, published, repair, restore, run, set_elements)

__all__ = [
    "NftError", "NftExists", "NftNotFound", "NftUnavailable",
    "SHARED_SETS", "Element", "Wanted", "add_commands", "binding_of", "hairpin", "isolate", "mac_spoof_check",
    "masquerade", "no_icc", "noicc_published", "owner_of", "port_elements", "published_port",
    "LAYOUT", "LAYOUT_SET", "TABLE", "declare", "marker",
    "Damage", "audit", "can_create", "commit", "drifted_chains", "elements_with_comments", "list_json", "missing",
    "owned", "published", "repair", "restore", "run", "set_elements",
]
