"""A network-list runner with libcni's semantics.

Per plugin it injects `name` and `cniVersion` from the list, `prevResult` when there
is one, and `runtimeConfig` = the runtime's capability args the plugin declared.
ADD runs the list in order, feeding each result to the next plugin, and
caches the final result; DEL runs it in reverse with the cached result; CHECK in
order with the cached result; GC in libcni's two phases; STATUS in order.
No rollback on a failed ADD: like every runtime, the caller must DEL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import IO, Any, Mapping, Sequence

from ..cni.errors import INVALID_CONFIG, INVALID_ENV, UNKNOWN_CONTAINER, CNIError
from ..cni.request import ID_PATTERN, validate_ifname
from . import cache
from .conf import IMPLEMENTED, NetworkConfigList, at_least
from .errors import PluginError, RunnerError
from .invoke import Invocation, exec_plugin, find_plugin

VALID_ATTACHMENTS = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS = "cni.dev/attachments"  # libcni also sends the spec's first, mistaken key (cni#1101)


@dataclass
class RuntimeConf:
    """One attachment as a runtime describes it (libcni's RuntimeConf)."""

    container_id: str
    netns: str
    ifname: str
    args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)


def describe(plugin: Mapping[str, Any]) -> str:
    """libcni's pluginDescription: type, and the plugin object's own name when it has one."""
    out = f'type="{plugin.get("type", "")}"'
    if plugin.get("name"):
        out += f' name="{plugin["name"]}"'
    return f"plugin {out}"


def runtime_config(plugin: Mapping[str, Any], capability_args: Mapping[str, Any]) -> dict[str, Any]:
    """The capability args this plugin declared (capabilities: {name: true}) and the runtime gave."""
    caps = plugin.get("capabilities") or {}
    return {cap: capability_args[cap] for cap, on in caps.items() if on is True and cap in capability_args}


def build_config(
    plugin: Mapping[str, Any],
    name: str,
    version: str,
    prev_result: Mapping[str, Any] | None,
    capability_args: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The stdin of one plugin exec. Nothing is removed: `capabilities` passes through."""
    conf = dict(plugin)
    conf["name"] = name
    conf["cniVersion"] = version
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    rc = runtime_config(plugin, capability_args)
    if rc:  # replaces a literal runtimeConfig wholesale; none matched: the literal one stays
        conf["runtimeConfig"] = rc
    conf.update(extra or {})
    return json.dumps(conf, separators=(",", ":")).encode()


def convert_result(doc: Mapping[str, Any], version: str, default_version: str | None = None) -> dict[str, Any]:
    """A result document in exactly `version` (libcni's GetAsVersion)."""
    from ..cni.result import Result  # pydantic: only when a result is really converted

    own = doc.get("cniVersion") or default_version or version
    try:
        return Result.parse(dict(doc), own).emit(version)
    except CNIError as err:
        raise RunnerError(f"failed to convert result from {own} to {version}: {err.msg}: {err.details}") from None


def normalize_result(stdout: bytes, config_version: str) -> dict[str, Any]:
    """A plugin's ADD answer, decoded and validated in its own version (missing = the config's)."""
    try:
        doc = json.loads(stdout)
    except (ValueError, RecursionError) as exc:
        raise RunnerError(f"decoding plugin result: {exc}") from None
    if not isinstance(doc, dict):
        raise RunnerError("decoding plugin result: not a JSON object")
    version = doc.get("cniVersion") or config_version or "0.1.0"
    try:
        return convert_result(doc, version)
    except RunnerError:
        if at_least(version, "0.3.0"):
            raise
        # Go's 0.x types print a result without IPs; ours refuse to build one. Keep it as sent.
        return {**doc, "cniVersion": version}


def validate_attachment(rt: RuntimeConf, network: str) -> None:
    """What libcni checks before an ADD: container ID, network name, interface name."""
    if not rt.container_id:
        raise PluginError(CNIError(UNKNOWN_CONTAINER, "missing containerID"))
    if not ID_PATTERN.fullmatch(rt.container_id):
        raise PluginError(CNIError(INVALID_ENV, "invalid characters in containerID", rt.container_id))
    if not network:
        raise PluginError(CNIError(INVALID_CONFIG, "missing network name"))
    if not ID_PATTERN.fullmatch(network):
        raise PluginError(CNIError(INVALID_CONFIG, "invalid characters found in network name", network))
    try:
        validate_ifname(rt.ifname)
    except CNIError as err:
        raise PluginError(err) from None


class CNIRunner:
    """libcni's CNIConfig: plugin directories, a cache directory, and the commands."""

    def __init__(
        self,
        path: Sequence[str],
        cache_dir: str = cache.DEFAULT_CACHE_DIR,
        *,
        env: Mapping[str, str] | None = None,
        stderr: IO[str] | None = None,
        timeout: float | None = None,
        wrapper: Sequence[str] = (),
    ):
        self.path = [p for p in path if p]
        self.cache_dir = cache_dir or cache.DEFAULT_CACHE_DIR
        self.env = env  # None: our own environment, as libcni passes os.Environ()
        self.stderr = stderr
        self.timeout = timeout
        self.wrapper = tuple(wrapper)  # argv prefix for every exec (nsenter --net=... --)

    # ---- one exec ----------------------------------------------------------------------
    def _exec(self, plugin: Mapping[str, Any], stdin: bytes, invocation: Invocation) -> bytes:
        plugin_path = find_plugin(plugin["type"], self.path)
        return exec_plugin(
            plugin_path, stdin, invocation, base_env=self.env, stderr=self.stderr, timeout=self.timeout,
            wrapper=self.wrapper,
        )

    def _invocation(self, command: str, rt: RuntimeConf | None) -> Invocation:
        if rt is None:  # GC, STATUS: only the command and CNI_PATH
            return Invocation(command, path=self.path)
        return Invocation(command, rt.container_id, rt.netns, rt.ifname, tuple(rt.args), self.path)

    # ---- ADD ---------------------------------------------------------------------------
    def add_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
        """ADD every plugin in order; cache and return the last result (in its own version)."""
        result: dict[str, Any] | None = None
        for plugin in net.plugins:
            try:
                find_plugin(plugin["type"], self.path)
                validate_attachment(rt, net.name)
                stdin = build_config(plugin, net.name, net.cni_version, result, rt.capability_args)
                stdout = self._exec(plugin, stdin, self._invocation("ADD", rt))
                result = normalize_result(stdout, net.cni_version)
            except PluginError as err:
                raise err.wrapped(f"{describe(plugin)} failed (add)") from None
            except RunnerError as err:
                raise RunnerError(f"{describe(plugin)} failed (add): {err}") from None
        assert result is not None  # a list always has a plugin
        try:
            cache.write(
                self.cache_dir,
                cache.CachedAttachment(
                    container_id=rt.container_id,
                    network=net.name,
                    ifname=rt.ifname,
                    config=net.raw,
                    netns=rt.netns,
                    cni_args=list(rt.args),
                    capability_args=dict(rt.capability_args),
                    result=result,
                ),
            )
        except (OSError, RunnerError) as exc:
            raise RunnerError(f"failed to set network {net.name!r} cached result: {exc}") from None
        return result

    # ---- cache ---------------------------------------------------------------------------
    def get_cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any] | None:
        """The cached final ADD result converted to the list's version; None without a cache."""
        doc = cache.cached_result(self.cache_dir, net.name, rt.container_id, rt.ifname)
        if doc is None:
            return None
        return convert_result(doc, net.cni_version or "0.1.0", default_version=net.cni_version)

    def get_cached_config(self, network: str, rt: RuntimeConf) -> tuple[bytes, RuntimeConf] | None:
        """The list bytes cached at ADD and the runtime args cached with them."""
        att = cache.read(self.cache_dir, network, rt.container_id, rt.ifname)
        if att is None:
            return None
        return att.config, RuntimeConf(
            rt.container_id, rt.netns, rt.ifname, att.cni_args or list(rt.args), att.capability_args
        )

    def get_cached_attachments(self, container_id: str = "") -> list[cache.CachedAttachment]:
        return cache.attachments(self.cache_dir, container_id)

    # ---- DEL ---------------------------------------------------------------------------
    def del_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """DEL in reverse order with the cached result (>= 0.4.0); the cache goes when all succeed."""
        prev = None
        if at_least(net.cni_version, "0.4.0"):
            try:
                prev = self.get_cached_result(net, rt)
            except RunnerError:
                # An unreadable cache must not block teardown: drop it, DEL without prevResult.
                cache.delete(self.cache_dir, net.name, rt.container_id, rt.ifname)
                prev = None
        for plugin in reversed(net.plugins):
            try:
                stdin = build_config(plugin, net.name, net.cni_version, prev, rt.capability_args)
                self._exec(plugin, stdin, self._invocation("DEL", rt))
            except PluginError as err:
                raise err.wrapped(f"{describe(plugin)} failed (delete)") from None
            except RunnerError as err:
                raise RunnerError(f"{describe(plugin)} failed (delete): {err}") from None
        cache.delete(self.cache_dir, net.name, rt.container_id, rt.ifname)

    # ---- CHECK -------------------------------------------------------------------------
    def check_network_list(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        if not at_least(net.cni_version, "0.4.0"):
            raise RunnerError(f'configuration version "{net.cni_version}" does not support the CHECK command')
        if net.disable_check:
            return
        try:
            prev = self.get_cached_result(net, rt)
        except RunnerError as err:
            raise RunnerError(f"failed to get network {net.name!r} cached result: {err}") from None
        for plugin in net.plugins:
            stdin = build_config(plugin, net.name, net.cni_version, prev, rt.capability_args)
            self._exec(plugin, stdin, self._invocation("CHECK", rt))

    # ---- GC ----------------------------------------------------------------------------
    def gc_network_list(self, net: NetworkConfigList, valid_attachments: Sequence[Mapping[str, str]] | None = None) -> None:
        """libcni's GCNetworkList.

        1. DEL every cached attachment of this network not in `valid_attachments`
           (with the cached netns and args, but the current list).
        2. For lists >= 1.1.0, GC each plugin with the valid list (no key at all when None).
        Errors are collected; everything runs; they are raised together at the end.
        """
        if net.disable_gc:
            return
        valid = {(a.get("containerID", ""), a.get("ifname", "")) for a in valid_attachments or []}
        stale = [att for att in self.cached_attachments_of(net.name) if (att.container_id, att.ifname) not in valid]
        errors = [f"failed to delete stale attachment {att.container_id} {att.ifname}: {err}"
                  for att in stale for err in [self.del_cached(net, att)] if err]
        errors += self.gc_plugins(net, valid_attachments)
        if errors:
            raise RunnerError("\n".join(errors))

    def cached_attachments_of(self, network: str) -> list[cache.CachedAttachment]:
        return [att for att in self.get_cached_attachments() if att.network == network]

    def del_cached(self, net: NetworkConfigList, att: cache.CachedAttachment) -> str:
        """DEL one cached attachment as GC does (its cached netns and args, the current list);
        the error, "" when it succeeded."""
        rt = RuntimeConf(att.container_id, att.netns, att.ifname, list(att.cni_args), dict(att.capability_args))
        try:
            self.del_network_list(net, rt)
        except RunnerError as err:
            return str(err)
        return ""

    def gc_plugins(self, net: NetworkConfigList, valid_attachments: Sequence[Mapping[str, str]] | None) -> list[str]:
        """GC's second phase: GC each plugin of a list >= 1.1.0 with the valid list (no key
        when None); the errors."""
        errors: list[str] = []
        if not at_least(net.cni_version, "1.1.0"):
            return errors
        extra = {}
        if valid_attachments is not None:
            listed = [{"containerID": a.get("containerID", ""), "ifname": a.get("ifname", "")} for a in valid_attachments]
            extra = {VALID_ATTACHMENTS: listed, LEGACY_ATTACHMENTS: listed}
        for plugin in net.plugins:
            try:
                stdin = build_config(plugin, net.name, net.cni_version, None, {}, extra)
                self._exec(plugin, stdin, self._invocation("GC", None))
            except RunnerError as err:
                errors.append(f"failed to GC plugin {plugin['type']}: {err}")
        return errors

    # ---- STATUS ------------------------------------------------------------------------
    def get_status_network_list(self, net: NetworkConfigList) -> None:
        """STATUS each plugin in order (lists >= 1.1.0; older ones are simply ready)."""
        if not at_least(net.cni_version, "1.1.0"):
            return
        for plugin in net.plugins:
            try:
                stdin = build_config(plugin, net.name, net.cni_version, None, {})
                self._exec(plugin, stdin, self._invocation("STATUS", None))
            except PluginError as err:
                raise err.wrapped(f"plugin type=\"{plugin['type']}\" failed (status)") from None
            except RunnerError as err:
                raise RunnerError(f"plugin type=\"{plugin['type']}\" failed (status): {err}") from None

    # ---- VERSION -----------------------------------------------------------------------
    def get_version_info(self, plugin_type: str) -> list[str]:
        """The versions a plugin supports (what VERSION answers; 0.1.0 for pre-VERSION plugins)."""
        plugin_path = find_plugin(plugin_type, self.path)
        stdin = json.dumps({"cniVersion": IMPLEMENTED}).encode()
        invocation = Invocation("VERSION", "dummy", "dummy", "dummy", (), ("dummy",))
        try:
            stdout = exec_plugin(
                plugin_path, stdin, invocation, base_env=self.env, stderr=self.stderr, timeout=self.timeout,
                wrapper=self.wrapper,
            )
        except PluginError as err:
            if err.error.msg == "unknown CNI_COMMAND: VERSION":
                return ["0.1.0"]
            raise
        try:
            info = json.loads(stdout)
        except ValueError as exc:
            raise RunnerError(f"decoding version info: {exc}") from None
        if not isinstance(info, dict) or not info.get("cniVersion"):
            raise RunnerError("decoding version info: missing field cniVersion")
        supported = info.get("supportedVersions") or []
        if not supported:
            if info["cniVersion"] == "0.2.0":
                return ["0.1.0", "0.2.0"]
            raise RunnerError("decoding version info: missing field supportedVersions")
        return [str(v) for v in supported]

    def validate_network_list(self, net: NetworkConfigList) -> list[str]:
        """libcni's ValidateNetworkList (what CRI-O and podman run at load): every plugin
        exists and lists the exact config version. Returns the declared capabilities."""
        expected = net.cni_version or "0.1.0"
        errors = []
        caps: list[str] = []
        for plugin in net.plugins:
            try:
                if expected not in self.get_version_info(plugin["type"]):
                    errors.append(f"plugin {plugin['type']} does not support config version {expected!r}")
            except RunnerError as err:
                errors.append(str(err))
            for cap, on in (plugin.get("capabilities") or {}).items():
                if on and cap not in caps:
                    caps.append(cap)
        if errors:
            raise RunnerError("; ".join(errors))
        return caps


def cache_dir_from_env(env: Mapping[str, str] | None = None) -> str:
    """The cache directory: CNI_CACHE_DIR when set (tests, private runs), else libcni's default."""
    env = os.environ if env is None else env
    return env.get("CNI_CACHE_DIR") or cache.DEFAULT_CACHE_DIR
