"""The plugins' event log: one line per command, appended to a file, never to stdout.

Where:  config key "logFile" (per network) > $CNM_LOG_FILE > /var/log/cnm-cni.log
Level:  config key "logLevel" > $CNM_LOG_LEVEL > "info"
        error  only failed commands
        info   every command (not VERSION) with its outcome and duration
        debug  info + the config on stdin and the answer on stdout
        off    nothing

A line is logfmt: `TIME level=.. plugin=.. command=.. container=.. network=.. ifname=..
netns=.. outcome=ok|error duration_ms=.. pid=..`, then `code= msg= details=` for a
failure and `traceback=` for an internal error (the traceback goes only here; the
runtime sees a CNI error object). Values with spaces, quotes or newlines are JSON
strings, so one event is always one line.

Stdlib only and no `logging` import: one os.open(O_APPEND) and one os.write per event
(a single append write does not interleave with other plugins' lines). Logging never
breaks a command: every failure to write is swallowed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

DEFAULT_FILE = "/var/log/cnm-cni.log"
FILE_ENV = "CNM_LOG_FILE"
LEVEL_ENV = "CNM_LOG_LEVEL"
FILE_KEY = "logFile"
LEVEL_KEY = "logLevel"
LEVELS = {"debug": 10, "info": 20, "error": 40, "off": 100}
DEFAULT_LEVEL = "info"
MAX_VALUE = 64 * 1024  # a huge config or traceback must not make a huge line


def settings(env: Mapping[str, str], config: Mapping[str, object] | None) -> tuple[str, int]:
    """(log file, numeric level) for a command: the network's keys, then the env, then defaults.
    Invalid values are ignored (the next source applies): a log setting never fails a command."""
    config = config if isinstance(config, Mapping) else {}
    path = config.get(FILE_KEY)
    if not (isinstance(path, str) and os.path.isabs(path)):
        path = env.get(FILE_ENV) or DEFAULT_FILE
    level = None
    for candidate in (config.get(LEVEL_KEY), env.get(LEVEL_ENV)):
        if isinstance(candidate, str) and candidate.lower() in LEVELS:
            level = LEVELS[candidate.lower()]
            break
    return path, LEVELS[DEFAULT_LEVEL] if level is None else level


def _value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_VALUE:
        text = text[:MAX_VALUE] + "...(truncated)"
    if text and not any(c in text for c in ' "=\\\n\r\t') and text.isprintable():
        return text
    return json.dumps(text)


def format_line(level: str, fields: Mapping[str, object], now: float | None = None) -> bytes:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    parts = [stamp, f"level={level}"]
    parts += [f"{key}={_value(val)}" for key, val in fields.items() if val is not None]
    return (" ".join(parts) + "\n").encode("utf-8", errors="replace")


def append(path: str, line: bytes) -> bool:
    """One O_APPEND write; False (never an exception) when the file cannot be written.
    O_NONBLOCK: a FIFO without a reader fails at once instead of hanging the command."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o640)
    except (OSError, ValueError):
        return False
    try:
        os.write(fd, line)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Event:
    """What dispatch learns while serving one command; written once at the end."""

    def __init__(self, plugin: str, env: Mapping[str, str], stdin: bytes):
        self.plugin = plugin
        self.env = env
        self.stdin = stdin
        self.started = time.monotonic()
        self.request = None  # the parsed cni.request.Request, once parsing succeeded
        self.error = None  # the CNIError answered
        self.traceback = ""  # an internal error's traceback (the log's eyes only)

    def _config(self) -> Mapping[str, object]:
        if self.request is not None:
            return self.request.config
        try:  # bad input: the network's log keys still apply when the JSON parses at all
            config = json.loads(self.stdin)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return {}
        return config if isinstance(config, dict) else {}

    def write(self, stdout: bytes = b"") -> None:
        try:
            self._write(stdout)
        except Exception:  # a bug here must never change the command's answer
            pass

    def _write(self, stdout: bytes) -> None:
        config = self._config()
        path, threshold = settings(self.env, config)
        level = "error" if self.error is not None else "info"
        if LEVELS[level] < threshold:
            return
        req, env = self.request, self.env
        name = config.get("name")
        fields: dict[str, object] = {
            "plugin": self.plugin or None,
            "command": req.command if req else env.get("CNI_COMMAND", ""),
            "container": req.container_id if req else env.get("CNI_CONTAINERID", ""),
            "network": name if isinstance(name, str) else "",
            "ifname": req.ifname if req else env.get("CNI_IFNAME", ""),
            "netns": req.netns if req else env.get("CNI_NETNS", ""),
            "outcome": "ok" if self.error is None else "error",
            "duration_ms": f"{(time.monotonic() - self.started) * 1000:.1f}",
            "pid": os.getpid(),
        }
        if self.error is not None:
            fields.update(code=self.error.code, msg=self.error.msg, details=self.error.details or None)
        if self.traceback:
            fields["traceback"] = self.traceback
        if threshold <= LEVELS["debug"]:
            fields["config"] = self.stdin.decode("utf-8", errors="replace")
            fields["stdout"] = stdout.decode("utf-8", errors="replace").strip() or None
        append(path, format_line(level, fields))


def message(env: Mapping[str, str], config: Mapping[str, object] | None, level: str, text: str,
            **fields: object) -> None:
    """A free-form line (e.g. why a GC removed nothing), under the same file and level rules."""
    try:
        path, threshold = settings(env, config)
        if LEVELS.get(level, LEVELS["info"]) >= threshold:
            name = (config or {}).get("name")
            append(path, format_line(level, {"network": name if isinstance(name, str) else None,
                                             "msg": text, **fields, "pid": os.getpid()}))
    except Exception:
        pass
