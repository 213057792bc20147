"""A small typed etcd v3 client over etcd's JSON gateway (stdlib http.client only).

Why not a gRPC client: the maintained ones pull grpcio and protobuf (~20 MB in the bundle,
and version clashes with the test tools); the JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
streamed `/v3/watch`) is stable from etcd 3.4 to 3.6. Its encoding: keys and values are
base64, int64s arrive as strings, zero-valued fields are omitted (a PUT event has no
`type`, an absent key's range has no `kvs`).

Endpoints: `http://host:port`, `https://host:port` (a CA, optionally a client certificate),
`unix:///path` (etcd names its socket `host:port`, so the path may end in `:port`). A request
goes to the last endpoint that answered, else to the others in turn: one member down costs
one failed connect, not a failed call.

A thread that has entered a container's network namespace must never talk to etcd over TCP
(the connection would start from the container): every connect checks that the calling
thread is in the namespace the client was made in.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Iterator

DEFAULT_TIMEOUT = 5.0
# What the client accepts from etcd: 200 nodes' records list in ~100 KiB and a watch message
# holds a few events. A prefix someone filled with huge or countless keys must not exhaust the
# helper's memory: a bigger answer is refused whole (a part of a list would drop live nodes).
MAX_ANSWER = 32 << 20  # bytes, of one answer or one watch message
MAX_LIST_KEYS = 100_000


class EtcdError(Exception):
    """etcd answered with an error (or something that is not its JSON)."""


class Unavailable(EtcdError):
    """No endpoint answered."""


class Idle(Unavailable):
    """A watch stream said nothing for its idle timeout (its member may be wedged or cut off
    from the cluster, which a stream alone never tells): list again."""


class TooLarge(EtcdError):
    """An answer (a list, a watch message) beyond MAX_ANSWER bytes or MAX_LIST_KEYS keys."""


class Compacted(EtcdError):
    """A watch's start revision was compacted away: list again."""

    def __init__(self, revision: int):
        super().__init__(f"revision compacted (oldest kept: {revision})")
        self.revision = revision


class WrongNamespace(EtcdError):
    """The calling thread is not in the network namespace the client was made in."""


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class Event:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _kv(raw: dict) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _netns_inode() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class TLS:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file or None)
        return ctx


class Client:
    """One etcd cluster. Thread-safe: each call opens (or reuses, per thread) a connection."""

    def __init__(self, endpoints: list[str], tls: TLS | None = None, timeout: float = DEFAULT_TIMEOUT):
        if not endpoints:
            raise ValueError("no etcd endpoint")
        for endpoint in endpoints:
            split_endpoint(endpoint)  # ValueError for a bad one, now
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._tls = tls or TLS()
        self._ssl: ssl.SSLContext | None = None
        self._preferred = 0
        self._netns = _netns_inode()
        self._local = threading.local()

    # ---- connections ------------------------------------------------------------------
    def _connect(self, endpoint: str, timeout: float) -> http.client.HTTPConnection:
        if _netns_inode() != self._netns:
            raise WrongNamespace("refusing to reach etcd from another network namespace")
        scheme, where = split_endpoint(endpoint)
        if scheme == "unix":
            return _UnixConnection(where, timeout)
        host, _, port = where.rpartition(":")
        host = host.strip("[]")
        if scheme == "https":
            if self._ssl is None:
                self._ssl = self._tls.context()
            return http.client.HTTPSConnection(host, int(port), timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(host, int(port), timeout=timeout)

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    def call(self, path: str, body: dict) -> dict:
        """POST `body` to `path` on the first endpoint that answers; its JSON answer."""
        payload = json.dumps(body).encode()
        failures = []
        for index in self._order():
            endpoint = self.endpoints[index]
            conns = self._local.__dict__.setdefault("conns", {})
            for attempt in (0, 1):  # a kept-alive connection the server closed: once more, fresh
                conn = conns.pop(endpoint, None)
                fresh = conn is None
                if conn is None:
                    conn = self._connect(endpoint, self.timeout)
                try:
                    conn.request("POST", path, payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = b"" if (resp.length or 0) > MAX_ANSWER else resp.read(MAX_ANSWER + 1)
                    too_large = (resp.length or 0) > MAX_ANSWER or len(data) > MAX_ANSWER
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    if not fresh and attempt == 0:
                        continue
                    failures.append(f"{safe_endpoint(endpoint)}: {exc}")
                    break
                if too_large:  # (never read to its end: the connection cannot be reused)
                    conn.close()
                    raise TooLarge(f"etcd {path}: answer larger than {MAX_ANSWER >> 20} MiB, refused "
                                   f"(a key prefix filled with huge or countless keys?)")
                conns[endpoint] = conn
                answer = _decode(data)
                if resp.status != 200:
                    message = answer.get("message") or answer.get("error") or f"HTTP {resp.status}"
                    if _retriable(message):  # this member cannot serve now (no leader, stopping)
                        failures.append(f"{safe_endpoint(endpoint)}: {message}")
                        break
                    raise EtcdError(f"etcd {path}: {message}")
                self._preferred = index
                return answer
        raise Unavailable("etcd unreachable: " + "; ".join(failures))

    def close(self) -> None:
        for conn in self._local.__dict__.pop("conns", {}).values():
            conn.close()

    # ---- kv ---------------------------------------------------------------------------
    def get(self, key: bytes) -> KeyValue | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def range(self, key: bytes, range_end: bytes | None = None, revision: int = 0,
              limit: int = 0) -> tuple[list[KeyValue], int]:
        """The keys in [key, range_end) (only `key` without range_end); and the store's revision.
        More than `limit` keys there: TooLarge."""
        body: dict = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        answer = self.call("/v3/kv/range", body)
        if limit and answer.get("more"):
            raise TooLarge(f"etcd: more than {limit} keys from {key[:100]!r}, refused")
        return [_kv(raw) for raw in answer.get("kvs", [])], _revision(answer)

    def list_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`; TooLarge beyond MAX_LIST_KEYS keys or MAX_ANSWER bytes."""
        return self.range(prefix, prefix_end(prefix), limit=MAX_LIST_KEYS)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _revision(self.call("/v3/kv/put", body))

    def delete(self, key: bytes, range_end: bytes | None = None) -> int:
        """Delete `key` (or [key, range_end)); how many keys went."""
        body = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        return int(self.call("/v3/kv/deleterange", body).get("deleted", 0))

    def create(self, key: bytes, value: bytes, lease: int = 0) -> tuple[bool, KeyValue | None]:
        """Put `key` only if it does not exist (one transaction): (True, None) when created,
        else (False, the key's current value)."""
        put: dict = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": b64(key)}}],
        })
        if answer.get("succeeded"):
            return True, None
        kvs = ((answer.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        return False, (_kv(kvs[0]) if kvs else None)

    def replace(self, key: bytes, mod_revision: int, value: bytes, lease: int = 0) -> bool:
        """Put `key` only if it is still at `mod_revision` (compare-and-swap)."""
        put: dict = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        answer = self.call("/v3/kv/txn", {
            "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_put": put}],
        })
        return bool(answer.get("succeeded"))

    # ---- leases -----------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        answer = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if answer.get("error"):
            raise EtcdError(f"lease grant: {answer['error']}")
        return int(answer["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh `lease`; its TTL now, 0 when it is gone (expired or revoked)."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int((answer.get("result") or {}).get("TTL", 0))

    def time_to_live(self, lease: int) -> int:
        """Seconds left on `lease`; -1 when it is gone."""
        answer = self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return int(answer.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # ---- watch ------------------------------------------------------------------------
    def watch(self, key: bytes, range_end: bytes | None = None, start_revision: int = 0) -> "Watch":
        """A stream of events on [key, range_end) from `start_revision` (next revision if 0)."""
        create: dict = {"key": b64(key), "progress_notify": True}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        if start_revision:
            create["start_revision"] = str(start_revision)
        payload = json.dumps({"create_request": create}).encode()
        failures = []
        for index in self._order():
            endpoint = self.endpoints[index]
            conn = self._connect(endpoint, self.timeout)
            try:
                conn.request("POST", "/v3/watch", payload, {"Content-Type": "application/json"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                failures.append(f"{safe_endpoint(endpoint)}: {exc}")
                continue
            if resp.status != 200:
                message = _decode(resp.read()).get("message", f"HTTP {resp.status}")
                conn.close()
                failures.append(f"{safe_endpoint(endpoint)}: {message}")
                continue
            return Watch(conn, resp)
        raise Unavailable("etcd unreachable: " + "; ".join(failures))


class Watch:
    """An open watch stream: iterate for batches of events; close() to stop (from any thread)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._conn = conn
        self._resp = resp
        self._buffer = bytearray()
        self._scanned = 0  # how much of _buffer holds no newline
        self.revision = 0  # the store's revision as of the last message

    def set_timeout(self, seconds: float | None) -> None:
        if self._conn.sock is not None:
            self._conn.sock.settimeout(seconds)

    def __iter__(self) -> Iterator[list[Event]]:
        while True:
            message = self._next()
            if message is None:
                return
            result = message.get("result") or {}
            if "error" in message:
                raise EtcdError(f"watch: {message['error'].get('message', message['error'])}")
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise Compacted(compact)
            if result.get("canceled"):
                raise EtcdError(f"watch canceled: {result.get('cancel_reason', '')}")
            self.revision = max(self.revision, _revision(result))
            events = [Event(raw.get("type", "PUT"), _kv(raw.get("kv") or {})) for raw in result.get("events", [])]
            if events or not result.get("created"):
                yield events  # (an empty batch: a progress notification)

    def _next(self) -> dict | None:
        """The next message: the gateway ends each with a newline. A message growing beyond
        MAX_ANSWER is refused (a watch catching up sends many revisions' events as one)."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                self._scanned = 0
                if line.strip():
                    return _decode(line)
                continue
            self._scanned = len(self._buffer)  # (a long message: each chunk is searched once)
            try:
                chunk = self._resp.read1(65536)
            except TimeoutError:
                raise Idle("watch stream idle") from None
            # (AttributeError, ValueError: closed from another thread, mid-read)
            except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
                raise Unavailable(f"watch stream broken: {exc}") from None
            if not chunk:
                rest, self._buffer = bytes(self._buffer), bytearray()
                return _decode(rest) if rest.strip() else None
            self._buffer += chunk
            if len(self._buffer) > MAX_ANSWER:
                self._buffer = bytearray()
                raise TooLarge(f"etcd watch: a message larger than {MAX_ANSWER >> 20} MiB, refused "
                               f"(a key prefix filled with huge or countless keys?)")

    def close(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._conn.close()


def split_endpoint(endpoint: str) -> tuple[str, str]:
    scheme, sep, rest = endpoint.partition("://")
    shown = _masked(endpoint)  # (these messages reach the runtime and the logs)
    if not sep or scheme not in ("http", "https", "unix") or not rest:
        raise ValueError(f"{shown!r} is not an etcd endpoint (http://host:port, https://host:port, unix:///path)")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{shown!r}: a unix socket's path must be absolute (unix:///path)")
        return scheme, rest
    rest = rest.rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{shown!r} has no host:port")
    return scheme, rest


def _masked(endpoint: str) -> str:
    """`endpoint` with whatever precedes an '@' (a user:password) replaced, even when the
    endpoint is malformed (safe_endpoint() expects a scheme)."""
    head, at, tail = endpoint.rpartition("@")
    if not at:
        return endpoint
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}***@{tail}" if sep else f"***@{tail}"


def safe_endpoint(endpoint: str) -> str:
    """The endpoint without any user:password part (never logged)."""
    scheme, _, rest = endpoint.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _decode(data: bytes) -> dict:
    try:
        answer = json.loads(data or b"{}")
    except ValueError:
        raise EtcdError(f"not etcd's JSON: {data[:80]!r}") from None
    if not isinstance(answer, dict):
        raise EtcdError(f"not etcd's JSON: {data[:80]!r}")
    return answer


RETRIABLE = ("no leader", "leader changed", "timed out", "stopped", "unhealthy", "not capable", "too many requests")


def _retriable(message: str) -> bool:
    return any(word in message for word in RETRIABLE)


def _revision(answer: dict) -> int:
    return int((answer.get("header") or {}).get("revision", 0))
