"""The only code that touches the kernel: thin wrappers over pyroute2 and nft.

Nothing here knows about CNI or CNM.

pyroute2's package __init__ imports every netlink family it speaks (NDB, IPDB, conntrack,
nl80211, wireguard, ipset...): ~35-55 ms of a one-shot plugin exec, for modules we never
use. Every pyroute2 import of ours lives in this package, so before any of them the package
is registered without running its __init__: the submodules we import (iproute.linux,
netlink.exceptions) import what they need themselves. Anyone in the same process asking
the package for one of its own names (`from pyroute2 import IPRoute`) gets the whole
package loaded then (PEP 562 __getattr__). A process that imported pyroute2 first keeps it.
"""

import importlib.util
import sys
import threading


def _pyroute2_without_its_init() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations or spec.loader is None:
        return  # not installed: the ImportError comes where pyroute2 is used
    package = importlib.util.module_from_spec(spec)
    lock = threading.RLock()
    loaded = []

    def __getattr__(name: str):
        if not loaded and importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)  # a submodule: the import system loads just that
        with lock:
            if not loaded:
                loaded.append(True)
                spec.loader.exec_module(package)  # the package's own __init__, once
        try:
            return package.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    package.__getattr__ = __getattr__
    sys.modules["pyroute2"] = package


_pyroute2_without_its_init()
