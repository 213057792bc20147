"""One plugin invocation: env + stdin parsed and validated."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from . import versions
from .args import parse_cni_args
from .errors import DECODE_FAILURE, INVALID_CONFIG, INVALID_ENV, IO_FAILURE, CNIError

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Used with fullmatch: `$` alone would accept a trailing newline ("abc\n").
ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAX_STDIN = 16 * 1024 * 1024  # a conflist with a big prevResult is a few KiB; refuse absurd input

# Which env vars each command needs (the spec's table, plus netns for ADD/CHECK as skel demands).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}


class Request:
    """One invocation, parsed: read-only once made (`replace` makes a changed copy).

    A plain class, not a dataclass: this module is on the path of every exec, VERSION and
    early errors included, where importing dataclasses (with inspect, ast, dis, tokenize)
    and typing was ~14 ms of a ~46 ms in-process VERSION."""

    __slots__ = ("command", "container_id", "netns", "ifname", "cni_args", "cni_path", "config", "stdin", "env",
                 "netns_fd")
    _COMPARED = __slots__[:-1]  # netns_fd: a descriptor of this process, not part of the request

    command: str
    container_id: str
    netns: str
    ifname: str
    cni_args: Mapping[str, str]
    cni_path: tuple[str, ...]
    config: Mapping[str, object]
    stdin: bytes
    env: Mapping[str, str]
    # An already-open CNI_NETNS, handed over by the thin client to the resident helper.
    netns_fd: int | None

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, cni_args: Mapping[str, str],
                 cni_path: tuple[str, ...], config: Mapping[str, object], stdin: bytes, env: Mapping[str, str],
                 netns_fd: int | None = None):
        values = locals()
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Request is read-only (set {name!r} with replace())")

    def replace(self, **changes) -> "Request":
        """A copy with `changes` (keyword per field), as dataclasses.replace would make."""
        return Request(**{name: changes.pop(name, getattr(self, name)) for name in self.__slots__}, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._COMPARED)

    __hash__ = None  # mutable mappings inside, as the frozen dataclass's hash would have found

    def __repr__(self) -> str:
        return "Request(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    @property
    def version(self) -> str:
        return self.config.get("cniVersion") or "0.1.0"

    @property
    def network(self) -> str:
        return self.config["name"]

    @property
    def plugin_type(self) -> str:
        return self.config.get("type", "")

    def runtime_config(self, key: str, default: object = None) -> object:
        """runtimeConfig[key], matching keys case-insensitively at every depth."""
        rc = fold_keys(self.config.get("runtimeConfig") or {})
        return rc.get(key.lower(), default) if isinstance(rc, dict) else default


def fold_keys(value: object) -> object:
    if isinstance(value, dict):
        return {str(k).lower(): fold_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [fold_keys(v) for v in value]
    return value


IFNAME_RULE = "must be 1-15 bytes, not '.' or '..', without '/', ':', '%' or whitespace"
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")  # bytes the kernel's isspace() takes for space


def valid_interface_name(name: str) -> bool:
    """Would the kernel create a link of exactly this name? Its dev_valid_name (1-15 bytes, not
    . or .., no '/', ':' or byte it takes for space: 0xa0 too, which UTF-8 characters such as
    'à' contain), and no '%', which it expands (eth%d: the first free number; every ADD would
    leave another link) -- plus whitespace as libcni sees it."""
    raw = name.encode("utf-8", "surrogateescape")
    return (0 < len(raw) <= 15 and name not in (".", "..")
            and not any(b in b"/:%\0" or b in _KERNEL_SPACE for b in raw)
            and not any(c.isspace() for c in name))


def validate_ifname(name: str) -> None:
    if not valid_interface_name(name):
        raise CNIError(INVALID_ENV, "invalid CNI_IFNAME", f"{name!r}: {IFNAME_RULE}")


def validate_container_id(cid: str) -> None:
    if not ID_PATTERN.fullmatch(cid):
        raise CNIError(
            INVALID_ENV,
            "invalid CNI_CONTAINERID",
            f"{cid!r} does not match {ID_PATTERN.pattern}",
        )


def decode_config(stdin: bytes, command: str) -> dict:
    if len(stdin) > MAX_STDIN:
        raise CNIError(IO_FAILURE, "stdin too large", f"{len(stdin)} bytes, at most {MAX_STDIN}")
    if not stdin.strip():
        if command == "VERSION":
            return {}
        raise CNIError(DECODE_FAILURE, "empty network configuration on stdin")
    try:
        # Strict like Go's encoding/json: UTF-8 only (json.loads(bytes) would guess UTF-16/32)
        # and no NaN/Infinity literals.
        config = json.loads(stdin.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CNIError(DECODE_FAILURE, "failed to decode network configuration", str(exc)[:500]) from None
    if not isinstance(config, dict):
        raise CNIError(DECODE_FAILURE, "network configuration must be a JSON object", f"got {type(config).__name__}")
    return config


def _reject_constant(name: str):
    raise ValueError(f"invalid JSON literal {name}")


def version_hint(stdin: bytes) -> str:
    """The version to print an error in when the request could not be parsed.

    The config's cniVersion when stdin decodes and names a supported one (missing or
    empty means 0.1.0, as for a parsed request); otherwise the newest version.
    """
    try:
        config = decode_config(stdin, "ADD")
    except Exception:  # CNIError, RecursionError, anything: this is only a hint
        return versions.LATEST
    version = config.get("cniVersion")
    if version in (None, ""):
        return "0.1.0"
    return version if isinstance(version, str) and version in versions.SUPPORTED else versions.LATEST


def lenient_config(stdin: bytes) -> dict:
    """VERSION's stdin: whatever decodes to an object, else {} (Go's skel ignores it entirely)."""
    try:
        config = decode_config(stdin, "VERSION")
    except Exception:
        return {}
    return config


def validate_config(config: dict, command: str) -> None:
    version = config.get("cniVersion")
    if version is None:  # missing or null: Go decodes both to ""
        version = ""
    if not isinstance(version, str):
        raise CNIError(DECODE_FAILURE, "invalid cniVersion", f"cniVersion must be a string, got {version!r}")
    versions.require_supported(version)
    if command == "VERSION":
        return
    name = config.get("name")
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        raise CNIError(INVALID_CONFIG, "invalid network name", f"name={name!r} must match {ID_PATTERN.pattern}")
    ptype = config.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise CNIError(INVALID_CONFIG, "invalid plugin type", f"type={ptype!r} must be a non-empty string")
    for key in ("runtimeConfig", "args", "ipam", "dns", "prevResult"):
        if key in config and config[key] is not None and not isinstance(config[key], dict):
            raise CNIError(INVALID_CONFIG, f"invalid {key}", f"{key}={config[key]!r} must be an object")
    for key, cni in (config.get("args") or {}).items():  # the reference plugins' args.cni (Go: any case)
        if command != "DEL" and str(key).lower() == "cni" and cni is not None and not isinstance(cni, dict):
            raise CNIError(INVALID_CONFIG, f"invalid args.{key}", f"args.{key}={cni!r} must be an object")


def parse(env: Mapping[str, str], stdin: bytes, netns_fd: int | None = None) -> Request:
    """Build a Request from a plugin's environment and stdin; raise CNIError on bad input."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [var for var in REQUIRED_ENV[command] if not env.get(var)]
    if missing:
        raise CNIError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    if command == "VERSION":  # never refused: it is how runtimes discover what we speak
        config = lenient_config(stdin)
    else:
        config = decode_config(stdin, command)
        validate_config(config, command)
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)
    cni_args = parse_cni_args(env.get("CNI_ARGS", ""), strict=command != "DEL") if command in ("ADD", "DEL", "CHECK") else {}
    cni_path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    return Request(
        command=command,
        container_id=container_id,
        netns=env.get("CNI_NETNS", ""),
        ifname=ifname,
        cni_args=cni_args,
        cni_path=cni_path,
        config=config,
        stdin=stdin,
        env=dict(env),
        netns_fd=netns_fd,
    )
