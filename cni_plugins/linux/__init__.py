"""The only code that touches the kernel: thin wrappers over pyroute2 and nft.

Nothing here knows about CNI or CNM.

pyroute2's package __init__ imports every netlink family it speaks (NDB, IPDB, conntrack,
nl80211, wireguard, ipset...): ~50 ms of a one-shot plugin exec, for modules we never use.
Every pyroute2 import of ours lives in this package, so before any of them the package is
registered without running its __init__; the submodules we import (iproute.linux,
netlink.exceptions) import what they need themselves. A process that imported all of
pyroute2 before keeps it.
"""

import importlib.util
import sys


def _pyroute2_without_its_init() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the ImportError comes where pyroute2 is used
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)


_pyroute2_without_its_init()
