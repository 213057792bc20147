"""Loading network configurations as libcni does (cni-spec.md §1.4)."""

from __future__ import annotations

import json

import pytest

from cni_plugins.runtime import conf
from cni_plugins.runtime.errors import ConfigError, NotFoundError


def write(directory, name, doc) -> str:
    path = directory / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return str(path)


def test_lookup_by_name_takes_the_first_sorted_list(tmp_path):
    write(tmp_path, "20-b.conflist", {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "second"}]})
    write(tmp_path, "10-a.conflist", {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "first"}]})
    write(tmp_path, "05-other.conflist", {"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "x"}]})
    net = conf.load_conflist(str(tmp_path), "net")
    assert net.types == ["first"]
    assert net.source.endswith("10-a.conflist")


def test_list_wins_over_a_legacy_file_of_the_same_name(tmp_path):
    write(tmp_path, "00-net.conf", {"cniVersion": "0.4.0", "name": "net", "type": "legacy"})
    write(tmp_path, "99-net.conflist", {"cniVersion": "0.4.0", "name": "net", "plugins": [{"type": "listed"}]})
    assert conf.load_conflist(str(tmp_path), "net").types == ["listed"]


@pytest.mark.parametrize("ext", [".conf", ".json"])
def test_legacy_file_is_upconverted_like_libcni(tmp_path, ext):
    write(tmp_path, "10-old" + ext, {"type": "bridge", "name": "old", "cniVersion": "0.3.1", "bridge": "b0"})
    net = conf.load_conflist(str(tmp_path), "old")
    assert (net.name, net.cni_version, net.types) == ("old", "0.3.1", ["bridge"])
    assert net.plugins[0]["bridge"] == "b0"
    # Go re-marshals the generated list: sorted keys, compact. cnitool caches these bytes.
    assert net.raw == (
        b'{"cniVersion":"0.3.1","name":"old","plugins":[{"bridge":"b0","cniVersion":"0.3.1",'
        b'"name":"old","type":"bridge"}]}'
    )


def test_raw_bytes_are_the_file_bytes(tmp_path):
    data = b'{ "name": "n",  "cniVersion": "1.0.0", "plugins": [ {"type": "t"} ] }\n'
    write(tmp_path, "n.conflist", data)
    assert conf.load_conflist(str(tmp_path), "n").raw == data


def test_not_found_and_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="no net configurations found"):
        conf.load_conflist(str(tmp_path), "net")
    write(tmp_path, "a.conflist", {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "t"}]})
    with pytest.raises(NotFoundError, match='no net configuration with name "net"'):
        conf.load_conflist(str(tmp_path), "net")
    with pytest.raises(ConfigError):
        conf.load_conflist(str(tmp_path / "missing"), "net")


def test_directories_and_other_extensions_are_ignored(tmp_path):
    (tmp_path / "x.conflist").mkdir()
    write(tmp_path, "net.conflist.bak", {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "bak"}]})
    write(tmp_path, "net.conflist", {"cniVersion": "1.0.0", "name": "net", "plugins": [{"type": "ok"}]})
    assert conf.load_conflist(str(tmp_path), "net").types == ["ok"]


@pytest.mark.parametrize(
    "doc, message",
    [
        (b"{not json", "error parsing configuration list"),
        (b"[]", "expected a JSON object"),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "t"}]}, "no name"),
        ({"name": 5, "plugins": [{"type": "t"}]}, "invalid name type"),
        ({"name": "n", "cniVersion": 1, "plugins": [{"type": "t"}]}, "invalid cniVersion type"),
        ({"name": "n", "plugins": {"type": "t"}}, "invalid 'plugins' type"),
        ({"name": "n", "plugins": [{"bridge": "b"}]}, "missing 'type'"),
        ({"name": "n", "plugins": [{"type": "t", "capabilities": {"portMappings": "yes"}}]}, "capabilities"),
        ({"name": "n", "plugins": []}, "no plugins in list"),
        ({"name": "n", "disableCheck": "maybe", "plugins": [{"type": "t"}]}, "invalid disableCheck"),
        ({"name": "n", "loadOnlyInlinedPlugins": True}, "no 'plugins' key"),
        ({"name": "n", "cniVersions": ["x.y"], "plugins": [{"type": "t"}]}, "invalid version"),
    ],
)
def test_bad_lists_are_refused_with_a_reason(tmp_path, doc, message):
    path = write(tmp_path, "bad.conflist", doc)
    with pytest.raises(ConfigError, match=message):
        conf.conflist_from_file(path)


@pytest.mark.parametrize(
    "top, listed, expected",
    [
        ("1.0.0", None, "1.0.0"),
        ("0.4.0", ["1.0.0", "0.3.1"], "1.0.0"),
        ("", ["0.4.0", "1.1.0"], "1.1.0"),
        ("1.1.0", ["0.4.0"], "1.1.0"),
        ("1.0.0", ["2.0.0", "1.1.0"], "1.1.0"),  # newer than implemented: ignored
        ("3.0.0", ["1.0.0"], "1.0.0"),
        ("3.0.0", None, "3.0.0"),  # no list: the top-level version stands (plugins will refuse it)
        ("", [], ""),
    ],
)
def test_version_selection_takes_the_highest_implemented(tmp_path, top, listed, expected):
    doc = {"name": "n", "plugins": [{"type": "t"}]}
    if top:
        doc["cniVersion"] = top
    if listed is not None:
        doc["cniVersions"] = listed
    assert conf.conflist_from_bytes(json.dumps(doc).encode()).cni_version == expected


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("false", False), (False, False)])
def test_flags_accept_bools_and_their_strings(value, expected):
    doc = {"name": "n", "plugins": [{"type": "t"}], "disableCheck": value, "disableGC": value}
    net = conf.conflist_from_bytes(json.dumps(doc).encode())
    assert (net.disable_check, net.disable_gc) == (expected, expected)


def test_plugins_from_the_side_directory_are_appended(tmp_path):
    write(tmp_path, "net.conflist", {"cniVersion": "1.1.0", "name": "net", "plugins": [{"type": "inline"}]})
    side = tmp_path / "net"
    side.mkdir()
    write(side, "20-b.conf", {"type": "side-b"})
    write(side, "10-a.conf", {"type": "side-a"})
    write(side, "30-c.json", {"type": "ignored"})
    assert conf.load_conflist(str(tmp_path), "net").types == ["inline", "side-a", "side-b"]
    # Only side plugins, no inline list at all.
    write(tmp_path, "net.conflist", {"cniVersion": "1.1.0", "name": "net"})
    assert conf.load_conflist(str(tmp_path), "net").types == ["side-a", "side-b"]
    # loadOnlyInlinedPlugins: the directory is not read.
    write(tmp_path, "net.conflist", {"cniVersion": "1.1.0", "name": "net", "loadOnlyInlinedPlugins": True,
                                     "plugins": [{"type": "inline"}]})
    assert conf.load_conflist(str(tmp_path), "net").types == ["inline"]
