"""linux.nft on the kernel: libnftables in process and the nft binary give the same tables;
the layout is declared once and checked by its marker afterwards, and a table from another
layout (an upgrade, chains flushed by hand, a table deleted) is brought back on the next
commit. Each case runs in a throwaway netns (a thread that setns()es into it)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cni_plugins.linux import nft
from cni_plugins.linux.nft import backend as nft_backend, libnftables
from support.common import in_netns

BACKENDS = ("libnftables", "exec")


def nft_json(ns: str, *args: str) -> list[dict]:
    proc = subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "nft", "-j", *args],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["nftables"]


def table_view(ns: str) -> list:
    """Our inet and bridge tables without kernel handles (comparable across namespaces)."""
    out = []
    for family in ("inet", "bridge"):
        for item in nft_json(ns, "list", "table", family, "cnm"):
            if "metainfo" in item:
                continue
            for body in item.values():
                body.pop("handle", None)
            out.append(item)
    return out


def rules(ns: str, family: str = "inet") -> int:
    return sum(1 for item in nft_json(ns, "list", "table", family, "cnm") if "rule" in item)


def markers(ns: str, family: str = "inet") -> list[str]:
    return sorted(item["set"]["name"] for item in nft_json(ns, "list", "table", family, "cnm")
                  if "set" in item and item["set"]["name"].startswith(nft.LAYOUT_SET))


@pytest.fixture
def use_backend():
    def choose(name: str):
        assert nft_backend.choose(name).name == name
    yield choose
    nft_backend.choose(None)


def sample() -> tuple[list, list]:
    ports = nft.published_port("tcp", None, 8080, "10.61.0.2", 80, "c1")
    others = [nft.Element("inet", "masq4", "10.61.0.2"), *nft.hairpin("10.61.0.2", "10.61.0.0/24"),
              *nft.no_icc("cnmtbr0", "cnmtveth0"), *nft.mac_spoof_check("cnmtveth0", "02:42:0a:3d:00:02")]
    return ports, others


def test_the_library_is_on_this_node():
    assert libnftables.library() is not None  # CI installs nftables (libnftables1): the fast path is tested


def test_both_backends_program_the_same_tables(netns, use_backend):
    views = {}
    for backend in BACKENDS:
        use_backend(backend)
        ns = netns("cnmtnft")
        ports, others = sample()
        in_netns(ns, lambda: nft.commit(add=ports + others, owner="ep1"))
        in_netns(ns, lambda: nft.commit(remove=others[:1], owner="ep1"))
        views[backend] = table_view(ns)
        assert in_netns(ns, nft.can_create, ports[:1]) is False
        assert in_netns(ns, nft.can_create, nft.published_port("udp", None, 8080, "10.61.0.3", 80)[:1])
        assert [(e.set, e.key, e.data, c) for e, c in in_netns(ns, nft.published, 4)] == [
            ("ports4_any_addr", {"concat": ["tcp", 8080]}, "10.61.0.2", "ep1 c1")]
        assert in_netns(ns, nft.missing, ports + others) == others[:1]
    assert views["libnftables"] == views["exec"]
    assert views["exec"]  # not two empty listings


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_table_means_every_port_is_free(netns, use_backend, backend):
    use_backend(backend)
    ns = netns("cnmtnft")
    assert in_netns(ns, nft.can_create, nft.published_port("tcp", "10.61.0.1", 81, "10.61.0.2", 80)) is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_restored_after_upgrade_flush_or_delete(netns, use_backend, backend):
    use_backend(backend)
    ns = netns("cnmtnft")
    ports, others = sample()
    in_netns(ns, lambda: nft.commit(add=ports, owner="ep1"))
    full = rules(ns)
    assert full > 0 and markers(ns) == [nft.marker("inet")]

    # An older release's table: its own marker, and chains without our rules.
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "sh", "-c",
                    f"nft delete set inet cnm {nft.marker('inet')}; nft add set inet cnm layout_0ld0ld00 "
                    "'{ type mark; }'; nft flush chain inet cnm postrouting"], check=True)
    assert rules(ns) < full
    in_netns(ns, lambda: nft.commit(add=others[:1], owner="ep2"))
    assert rules(ns) == full and markers(ns) == [nft.marker("inet")]
    assert in_netns(ns, nft.can_create, ports[:1]) is False  # the elements were kept

    # The table deleted by hand: the next commit declares it again, with its elements.
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "nft", "delete", "table", "inet", "cnm"], check=True)
    in_netns(ns, lambda: nft.commit(add=ports, owner="ep1"))
    assert rules(ns) == full and in_netns(ns, nft.can_create, ports[:1]) is False


def test_marker_check_changes_nothing(netns, use_backend):
    """The steady-state commit (marker check + elements) leaves no element of its own."""
    use_backend("libnftables")
    ns = netns("cnmtnft")
    ports, _ = sample()
    for _ in range(3):
        in_netns(ns, lambda: nft.commit(add=ports, owner="ep1"))
        in_netns(ns, lambda: nft.commit(remove=ports, owner="ep1"))
    for family in ("inet",):
        for item in nft_json(ns, "list", "table", family, "cnm"):
            body = item.get("set") or item.get("map") or {}
            assert not body.get("elem"), body


def test_flushed_chain_is_reported_and_repaired_not_created(netns, use_backend):
    """commit() trusts the marker, so a chain flushed by hand is found by CHECK
    (drifted_chains) and restored by `cnmctl gc` (repair); repair never creates a table."""
    use_backend("libnftables")
    ns = netns("cnmtnft")
    assert in_netns(ns, nft.repair, "inet") is False
    assert subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "nft", "list", "table", "inet", "cnm"],
                          capture_output=True).returncode != 0  # still no table
    ports, _ = sample()
    in_netns(ns, lambda: nft.commit(add=ports, owner="ep1"))
    full = rules(ns)
    assert in_netns(ns, nft.drifted_chains, ["inet"]) == []
    subprocess.run(["ip", "netns", "exec", os.path.basename(ns), "nft", "flush", "chain", "inet", "cnm", "prerouting"],
                   check=True)
    in_netns(ns, lambda: nft.commit(add=ports, owner="ep1"))  # the fast path does not notice
    assert in_netns(ns, nft.drifted_chains, ["inet"]) == ["inet prerouting"]
    assert in_netns(ns, nft.repair, "inet") is True
    assert rules(ns) == full and in_netns(ns, nft.drifted_chains, ["inet"]) == []
    assert in_netns(ns, nft.can_create, ports[:1]) is False  # elements kept
    assert in_netns(ns, nft.repair, "inet") is False  # nothing to do


@pytest.mark.parametrize("backend", BACKENDS)
def test_failures_are_typed_by_the_backend(netns, use_backend, backend):
    """Issue 13 item 3: the backend turns nft's messages into typed errors, the same for
    both (callers matched message strings): a missing table is NftNotFound, a key another
    owner holds is NftExists (removal by value of a published port now someone else's)."""
    use_backend(backend)
    ns = netns("cnmtnft")
    with pytest.raises(nft.NftNotFound):
        in_netns(ns, nft.list_json, ["list", "table", "inet", nft.TABLE])
    in_netns(ns, lambda: nft.commit(add=nft.published_port("tcp", None, 8080, "10.61.0.2", 80), owner="ep1"))
    with pytest.raises(nft.NftExists):
        in_netns(ns, lambda: nft.commit(remove=nft.published_port("tcp", None, 8080, "10.61.0.3", 80), owner="ep2"))
    with pytest.raises(nft.NftError) as failed:
        in_netns(ns, nft.run, [{"add": {"set": {"family": "inet", "table": nft.TABLE, "name": "x", "type": "nonsense"}}}])
    assert not isinstance(failed.value, (nft.NftNotFound, nft.NftExists)), failed.value


def test_no_nft_binary_is_unavailable(use_backend, monkeypatch, tmp_path):
    """Issue 13 item 3: the binary backend without `nft` says so with its own type (the
    sweep matched "cannot run" in the message to skip a node without nftables)."""
    use_backend("exec")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nft_backend.current().problem() is not None
    with pytest.raises(nft.NftUnavailable):
        nft.list_json(["list", "tables"])
