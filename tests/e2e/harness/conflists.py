"""Network lists for the e2e tests: the shipped ones (conf/) made private to a test, and the plain
cnm-bridge + cnm-ipam list the runtime tests attach to."""

from __future__ import annotations

import copy
import glob
import json
import os
import random

from .host import BIN, CONF, GO_PLUGINS


def plugin_types(conflist: dict) -> set[str]:
    """Every binary a list needs: plugin types and their IPAM types."""
    found = set()
    for plugin in conflist.get("plugins") or []:
        found.add(plugin.get("type", ""))
        ipam = plugin.get("ipam") or {}
        if ipam.get("type"):
            found.add(ipam["type"])
    return found


def available(ptype: str) -> bool:
    return os.path.exists(os.path.join(BIN, ptype)) or os.path.exists(os.path.join(GO_PLUGINS, ptype))


def shipped_conflists() -> list[str]:
    """conf/**/*.conflist, relative to conf/."""
    paths = glob.glob(os.path.join(CONF, "**", "*.conflist"), recursive=True)
    return sorted(os.path.relpath(p, CONF) for p in paths)


def load_shipped(relpath: str) -> dict:
    with open(os.path.join(CONF, relpath)) as f:
        return json.load(f)


def random_subnet(first: int = 100, last: int = 199) -> str:
    """A /24 of 10.0.0.0/8 for this run; it only exists inside the test's node namespace."""
    return f"10.{random.randint(first, last)}.{random.randint(0, 255)}.0/24"


def adapt(conflist: dict, name: str, bridge: str, data_dir: str, version: str | None = None,
          subnet: str | None = None, master: str | None = None) -> dict:
    """A shipped list made private to a test: its own network name, bridge, IPAM dir (and pod range),
    and its macvlans' `master` (a link of the test's node)."""
    out = copy.deepcopy(conflist)
    out["name"] = name
    if version:
        out["cniVersion"] = version
        out.pop("cniVersions", None)
    for plugin in out.get("plugins") or []:
        if "bridge" in plugin:
            plugin["bridge"] = bridge
        if master and plugin.get("type") == "cnm-macvlan":
            plugin["master"] = master
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") in ("cnm-ipam", "host-local"):
            ipam["dataDir"] = data_dir
            if subnet:
                ipam["ranges"] = [[{"subnet": subnet}]]
    return out


def bridge_conflist(name: str, bridge: str, subnet: str, data_dir: str, version: str = "1.0.0",
                    capabilities: dict | None = None) -> dict:
    """cnm-bridge + cnm-ipam, the network every runtime test attaches to."""
    plugin = {
        "type": "cnm-bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": True,
        "ipam": {
            "type": "cnm-ipam",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    if capabilities:
        plugin["capabilities"] = capabilities
    return {"cniVersion": version, "name": name, "plugins": [plugin]}
