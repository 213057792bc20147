"""Network configuration files as libcni reads them.

A network is a list (.conflist) of plugin objects under one name and version.
Legacy single-plugin files (.conf, .json) are upconverted to a one-plugin list.
Lookup by name scans the directory in sorted order: lists first, then legacy files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..cni import versions
from .errors import ConfigError, NotFoundError

LIST_EXTENSIONS = (".conflist",)
LEGACY_EXTENSIONS = (".conf", ".json")
# Newest spec version this runner implements; newer entries of `cniVersions` are ignored.
IMPLEMENTED = versions.LATEST


@dataclass
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    # The bytes the list was read from: cached verbatim (base64) as libcni does.
    raw: bytes
    disable_check: bool = False
    disable_gc: bool = False
    load_only_inlined_plugins: bool = False
    source: str = field(default="", compare=False)

    @property
    def types(self) -> list[str]:
        return [p["type"] for p in self.plugins]


def version_key(version: str) -> tuple[int, int, int]:
    """Semver order of a spec version string; ConfigError if it is not one."""
    parts = version.split(".") if isinstance(version, str) else []
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if not 1 <= len(nums) <= 3 or any(n < 0 for n in nums):
        raise ConfigError(f"invalid version {version!r}")
    return tuple(nums + [0] * (3 - len(nums)))  # type: ignore[return-value]


def at_least(version: str, floor: str) -> bool:
    """libcni's GreaterThanOrEqualTo; an empty version means 0.1.0."""
    return version_key(version or "0.1.0") >= version_key(floor)


def parse_bool(value: Any, key: str) -> bool:
    """Go strconv.ParseBool semantics: libcni accepts a JSON bool or its string form."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("0", "f", "F", "FALSE", "false", "False"):
            return False
    raise ConfigError(f"error parsing configuration list: invalid {key} value {value!r}")


def select_version(cni_version: str, cni_versions: Any) -> str:
    """cniVersion plus the 1.1 `cniVersions` list: the highest one this runner implements."""
    if cni_versions is None:
        return cni_version
    if not isinstance(cni_versions, list):
        raise ConfigError(f"error parsing configuration list: invalid cniVersions type {type(cni_versions).__name__}")
    candidates = []
    for entry in cni_versions:
        if not isinstance(entry, str):
            raise ConfigError(f"error parsing configuration list: invalid cniVersions entry {entry!r}")
        if version_key(entry) <= version_key(IMPLEMENTED):
            candidates.append(entry)
    if cni_version and version_key(cni_version) <= version_key(IMPLEMENTED):
        candidates.append(cni_version)
    if not candidates:
        return cni_version
    return max(candidates, key=version_key)


def _decode_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"error parsing {what}: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"error parsing {what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def check_plugin(plugin: Any, index: int | str) -> dict[str, Any]:
    if not isinstance(plugin, dict):
        raise ConfigError(f"failed to parse plugin config {index}: expected an object")
    ptype = plugin.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise ConfigError(f"failed to parse plugin config {index}: error parsing configuration: missing 'type'")
    caps = plugin.get("capabilities", {})
    if caps is not None and (
        not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values())
    ):
        raise ConfigError(f"failed to parse plugin config {index}: capabilities must map names to booleans")
    return plugin


def conflist_from_bytes(data: bytes, source: str = "") -> NetworkConfigList:
    """Parse a .conflist document (without plugins from a side directory)."""
    raw = _decode_object(data, "configuration list")
    name = raw.get("name")
    if name is None:
        raise ConfigError("error parsing configuration list: no name")
    if not isinstance(name, str):
        raise ConfigError(f"error parsing configuration list: invalid name type {type(name).__name__}")
    cni_version = raw.get("cniVersion", "")
    if not isinstance(cni_version, str):
        raise ConfigError(f"error parsing configuration list: invalid cniVersion type {type(cni_version).__name__}")
    cni_version = select_version(cni_version, raw.get("cniVersions"))
    flags = {
        key: parse_bool(raw[key], key) if key in raw else False
        for key in ("disableCheck", "disableGC", "loadOnlyInlinedPlugins")
    }
    plugins = raw.get("plugins")
    if plugins is None:
        if flags["loadOnlyInlinedPlugins"]:
            raise ConfigError(
                "error parsing configuration list: `loadOnlyInlinedPlugins` is true, and no 'plugins' key"
            )
        plugins = []
    if not isinstance(plugins, list):
        raise ConfigError(f"error parsing configuration list: invalid 'plugins' type {type(plugins).__name__}")
    return NetworkConfigList(
        name=name,
        cni_version=cni_version,
        plugins=[check_plugin(p, i) for i, p in enumerate(plugins)],
        raw=bytes(data),
        disable_check=flags["disableCheck"],
        disable_gc=flags["disableGC"],
        load_only_inlined_plugins=flags["loadOnlyInlinedPlugins"],
        source=source,
    )


def conf_from_bytes(data: bytes) -> dict[str, Any]:
    """A legacy single-plugin configuration (one object with `type`)."""
    return check_plugin(_decode_object(data, "configuration"), "")


def upconvert(conf: dict[str, Any], source: str = "") -> NetworkConfigList:
    """libcni's ConfListFromConf: the one plugin becomes a list with its name and version.

    The list is re-serialised as Go does (sorted keys, compact), so cnitool and this
    runner cache the same bytes for the same legacy file.
    """
    name = conf.get("name", "")
    doc = {"cniVersion": conf.get("cniVersion", ""), "name": name if isinstance(name, str) else "", "plugins": [conf]}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return conflist_from_bytes(data, source)


def conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    """Files (not directories) in `directory` whose extension is one of `extensions`, sorted."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"cannot read {directory}: {exc.strerror}") from None
    found = []
    for entry in entries:
        path = os.path.join(directory, entry)
        if os.path.isdir(path):
            continue
        if os.path.splitext(entry)[1] in extensions:
            found.append(path)
    return sorted(found)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"error reading {path}: {exc.strerror}") from None


def side_plugins(directory: str, name: str) -> list[dict[str, Any]]:
    """Plugin objects in <confdir>/<network name>/*.conf, appended after the inline ones."""
    return [conf_from_bytes(_read(p)) for p in conf_files(os.path.join(directory, name), (".conf",))]


def conflist_from_file(path: str) -> NetworkConfigList:
    conf = conflist_from_bytes(_read(path), source=path)
    if not conf.load_only_inlined_plugins:
        conf.plugins.extend(side_plugins(os.path.dirname(path), conf.name))
    if not conf.plugins:
        raise ConfigError(f"error parsing configuration list {path}: no plugins in list")
    return conf


def legacy_conf_from_file(path: str) -> dict[str, Any]:
    return conf_from_bytes(_read(path))


def load_conflist(directory: str, name: str) -> NetworkConfigList:
    """libcni's LoadConfList: the first .conflist named `name`, else an upconverted .conf/.json."""
    lists = conf_files(directory, LIST_EXTENSIONS)
    for path in lists:
        conf = conflist_from_file(path)
        if conf.name == name:
            return conf
    legacy = conf_files(directory, LEGACY_EXTENSIONS)
    if not legacy and not lists:
        raise ConfigError(f"no net configurations found in {directory}")
    for path in legacy:
        conf = legacy_conf_from_file(path)
        if conf.get("name") == name:
            return upconvert(conf, source=path)
    raise NotFoundError(directory, name)


def load_any(path: str) -> NetworkConfigList:
    """A configuration named by its file: a list, or a legacy file upconverted."""
    if os.path.splitext(path)[1] in LEGACY_EXTENSIONS:
        return upconvert(legacy_conf_from_file(path), source=path)
    return conflist_from_file(path)
