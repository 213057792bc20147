"""What an operator sees of an overlay network on this node (`cnmctl network inspect`,
`cnmctl doctor`): every node's lease as etcd has it, and whether this node's kernel agrees.
Read-only; never a secret (the store's endpoints without credentials, file paths only)."""

from __future__ import annotations

import ipaddress
import time

from . import etcd, lease, mesh, peers, state

TIMEOUT = 2.0


def report(state_dir: str, network: str) -> dict | None:
    """None when this node holds no lease on `network` (no state file)."""
    data = state.read(state_dir, network)
    if data is None or not isinstance(data.get("settings"), dict):
        return None
    settings = data["settings"]
    _, vx_name = mesh.device_names(network)
    out = {
        "Node": data.get("node", ""),
        "Subnet": data.get("subnet", ""),
        "VtepIP": data.get("vtepIP", ""),
        "VtepMAC": data.get("vtepMAC", ""),
        "Underlay": data.get("underlay", ""),
        "MTU": data.get("mtu", 0),
        "Device": vx_name,
        "StateFile": state.path(state_dir, network),
        "LeaseConfirmedAgo": round(time.time() - float(data.get("confirmed", 0)), 1),
        "Store": {"Endpoints": [etcd.safe_endpoint(e) for e in settings["store"]["endpoints"]],
                  "Prefix": settings["store"].get("prefix", ""), "Reachable": False, "Error": ""},
        "Nodes": [],
        "Ignored": [],
        "DuplicateMACs": [],
        "Kernel": {},
    }
    kernel, kernel_error = _kernel_peers(vx_name)
    out["Kernel"] = {"Device": kernel is not None, "Error": kernel_error}
    try:
        client = mesh.client_of(settings, timeout=TIMEOUT)
        layout = mesh.layout_of(settings)
        records, skipped, _ = lease.read_all(client, layout)
        ttls = {}
        for r in records:
            if r.lease and r.lease not in ttls:
                ttls[r.lease] = client.time_to_live(r.lease)
    except etcd.EtcdError as exc:
        out["Store"]["Error"] = str(exc)
        return out
    out["Store"]["Reachable"] = True
    out["Ignored"] = skipped
    try:
        own_subnet = ipaddress.ip_network(out["Subnet"])
    except ValueError:
        own_subnet = None
    _, dropped = peers.select(records, out["Node"], own_subnet, out["VtepIP"], out["VtepMAC"])
    out["DuplicateMACs"] = [why for _, why in dropped]
    left_out = {r.subnet for r, _ in dropped}
    for r in sorted(records, key=lambda r: r.subnet):
        mine = r.node == out["Node"]
        if mine:
            agrees = "self"
        elif r.subnet in left_out:
            agrees = "duplicate MAC"
        elif kernel is None:
            agrees = "no device"
        else:
            have = kernel.get(str(r.subnet))
            agrees = "yes" if have == (r.vtep_ip, r.vtep_mac) else ("differs" if have else "missing")
        out["Nodes"].append({"Node": r.node, "Subnet": str(r.subnet), "VtepIP": r.vtep_ip, "VtepMAC": r.vtep_mac,
                             "LeaseTTL": ttls.get(r.lease, 0), "Kernel": agrees})
    if kernel is not None:
        held = {str(r.subnet) for r in records}
        out["Kernel"]["Extra"] = sorted(s for s in kernel if s not in held)
    return out


def _kernel_peers(vx_name: str) -> tuple[dict | None, str]:
    """subnet -> (VTEP IP, MAC) as the kernel's mesh has it; None when there is no device."""
    try:
        from ...linux import links, vxlan

        with links.rtnl() as ipr:
            index = links.link_index(ipr, vx_name)
            if index is None:
                return None, f"VXLAN device {vx_name} is missing"
            return {p.subnet: (p.vtep_ip, p.vtep_mac) for p in vxlan.peers(ipr, index)}, ""
    except Exception as exc:  # noqa: BLE001 -- reported
        return None, f"{type(exc).__name__}: {exc}"


def problems(state_dir: str) -> list[tuple[str, str, str, str]]:
    """(severity, network, message, fix) of every overlay network of this node (doctor)."""
    from ...linux import links

    found = []
    for data in state.all_networks(state_dir):
        network = data["network"]
        rep = report(state_dir, network)
        if rep is None:
            continue
        if not rep["Store"]["Reachable"]:
            found.append(("error", network, f"etcd unreachable ({rep['Store']['Error']}): ADD still works on this "
                                            f"node's subnet {rep['Subnet']}, but the mesh cannot follow other nodes",
                          "bring etcd back (or fix store.endpoints / the TLS files); the helper converges by itself"))
        if not rep["Kernel"]["Device"]:
            found.append(("error", network, rep["Kernel"]["Error"] or "the VXLAN device is missing",
                          "restart cnmd (it recreates the device and the mesh), or run an ADD"))
        else:
            with links.rtnl() as ipr:
                link = links.get_link(ipr, rep["Device"])
                mtu = link.get_attr("IFLA_MTU") if link is not None else 0
                under = links.get_link(ipr, rep["Underlay"]) if rep["Underlay"] else None
                under_mtu = under.get_attr("IFLA_MTU") if under is not None else 0
            if mtu != rep["MTU"] or (under_mtu and rep["MTU"] > under_mtu - 50):
                found.append(("error", network, f"MTU mismatch: device {rep['Device']} has {mtu}, pods "
                                                f"{rep['MTU']}, underlay {rep['Underlay']} {under_mtu} (at most "
                                                f"underlay − 50)", "set mtu to underlay − 50 or less"))
        if rep["Store"]["Reachable"]:
            if not any(n["Kernel"] == "self" for n in rep["Nodes"]):
                found.append(("error", network, f"etcd holds no lease of this node ({rep['Node']}): its subnet "
                                                f"{rep['Subnet']} may be claimed by another node",
                              "start cnmd (it keeps the lease alive and claims it again)"))
            wrong = [n for n in rep["Nodes"] if n["Kernel"] in ("missing", "differs")]
            for n in wrong:
                found.append(("error", network, f"node {n['Node']} ({n['Subnet']} via {n['VtepIP']}): route, "
                                                f"neighbour or FDB entry {n['Kernel']} in the kernel",
                              "start cnmd, which programs the mesh from etcd"))
            for subnet in rep["Kernel"].get("Extra", []):
                found.append(("warning", network, f"the kernel routes {subnet} into the overlay, but no node "
                                                  f"holds it in etcd", "start cnmd, which removes it"))
            for why in rep["DuplicateMACs"]:
                found.append(("warning", network, f"two records in etcd have one VTEP MAC: {why}",
                              "give the later node its own MAC (its nodeName: the MAC derives from it), or "
                              "delete the record that is not a node's"))
            for why in rep["Ignored"]:
                found.append(("warning", network, f"etcd holds a record that is not valid: {why}",
                              "delete it from etcd (it is ignored)"))
        if not found or all(f[1] != network for f in found):
            found.append(("ok", network, f"lease {rep['Subnet']} held, {len(rep['Nodes']) - 1} other node(s) in "
                                         f"the mesh, etcd reachable", ""))
    return found
