"""The name server of one network: UDP and TCP on port 53 of each gateway address, bound to
the interface the gateway is on (so a query that reaches the host from outside, even to that
address, is never answered: no open resolver).

Threads, per network (a flood on one network never holds up another's answers):
- the network's loop: UDP queries answered in turn, TCP connections accepted;
- TCP connections, each in a thread of its own, at most MAX_TCP at once and MAX_TCP_PER_CLIENT
  from one address (more are closed);
- forwarding, in a small pool: an upstream that is slow or silent holds up only the queries
  sent to it, each for at most FORWARD_TIMEOUT, and at most MAX_PENDING wait (more: SERVFAIL).
Every thread is made by the loop's thread or by the thread that made the server, so all of
them are in the network namespace the server was made in.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from . import answer
from .zone import Zone

PORT = 53
FORWARD_TIMEOUT = 2.0  # seconds for one upstream to answer
FORWARD_WORKERS = 4
MAX_PENDING = 256  # forwarded queries waiting at once; beyond, SERVFAIL at once
MAX_TCP = 16  # TCP connections served at once per network
MAX_TCP_PER_CLIENT = 4  # of which one client address holds at most (one container cannot take all)
TCP_IDLE = 5.0  # a TCP client that sends nothing for this long is dropped
TCP_LIFETIME = 30.0  # and any connection after this long (a slow sender cannot keep its slot)
MAX_TCP_QUERIES = 100  # per connection
UDP_BATCH = 64  # datagrams read per wake before TCP accepts get their turn
HOUSEKEEPING_S = 5.0  # how often an idle server asks whether its network still has endpoints
UDP_BUFFER = 1 << 20  # bytes of queued queries (~1,000 small datagrams)
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: root may exceed net.core.rmem_max
IP_FREEBIND = 15  # <linux/in.h>: bind a gateway address the bridge does not have yet (IPv6 DAD)


def listening_socket(kind: int, address: str, device: str, port: int = PORT) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A helper taking over from another binds the same addresses before the other lets go.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        if kind == socket.SOCK_DGRAM:  # a burst of queries waits instead of being dropped
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_BUFFER)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class NetworkServer:
    def __init__(self, store_directory: str, network: str, listen, own_addresses, log, on_idle=None):
        """Binds at once, in the calling thread's network namespace (raises OSError when it
        cannot); serve with start()."""
        self.store_directory = store_directory
        self.network = network
        self.listen = frozenset(tuple(item) for item in listen)
        self.log = log
        self._own_addresses = own_addresses  # () -> every address the helper's servers listen on
        self._on_idle = on_idle
        self.devices = {device: socket.if_nametoindex(device) for _, device in self.listen}
        self.zone = Zone(store_directory, network)
        self._sockets: list[tuple[int, socket.socket]] = []
        try:
            for address, device in sorted(self.listen):
                self._sockets.append((socket.SOCK_DGRAM, listening_socket(socket.SOCK_DGRAM, address, device)))
                self._sockets.append((socket.SOCK_STREAM, listening_socket(socket.SOCK_STREAM, address, device)))
        except BaseException:
            self._close_sockets()
            self.zone.close()
            raise
        self._cache = answer.AnswerCache()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._tcp_slots = threading.BoundedSemaphore(MAX_TCP)
        self._tcp_clients: dict[str, int] = {}  # client address -> connections served now
        self._tcp_clients_lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._forwarders = ThreadPoolExecutor(FORWARD_WORKERS, thread_name_prefix="cnmd-dns-fwd")
        self._thread = threading.Thread(target=self._run, name=f"cnmd-dns-{network}"[:40], daemon=True)

    # ---- life -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def current(self, listen=None) -> bool:
        """Alive and still what `listen` needs (None: what it listens on now): the same
        addresses, on the same interfaces (a bridge deleted and made again has a new index: a
        socket bound to the old one hears nothing)."""
        if not self.alive or (listen is not None and frozenset(tuple(item) for item in listen) != self.listen):
            return False
        try:
            return all(socket.if_nametoindex(d) == index for d, index in self.devices.items())
        except OSError:
            return False

    def stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if not self._thread.is_alive() or self._thread is threading.current_thread():
            self._release()

    def _release(self) -> None:
        self._forwarders.shutdown(wait=False, cancel_futures=True)
        self._close_sockets()
        self.zone.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _close_sockets(self) -> None:
        for _, sock in self._sockets:
            sock.close()
        self._sockets = []

    # ---- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for kind, sock in self._sockets:
                selector.register(sock, selectors.EVENT_READ, kind)
            while not self._stop.is_set():
                events = selector.select(HOUSEKEEPING_S)
                if not events:
                    self._housekeeping()
                    continue
                for key, _ in events:
                    if key.data == socket.SOCK_DGRAM:
                        self._udp(key.fileobj)
                    elif key.data == socket.SOCK_STREAM:
                        self._accept(key.fileobj)
        except Exception as exc:  # noqa: BLE001 -- logged; the service makes it again on the next ADD
            self.log(f"dns {self.network}: server stopped: {type(exc).__name__}: {exc}")
            self._stop.set()
        finally:
            selector.close()

    def _housekeeping(self) -> None:
        if self._on_idle is None:
            return
        try:
            empty = self.zone.gone() or self.zone.current().empty
        except Exception:  # noqa: BLE001 -- the store cannot be read any more
            empty = True
        if empty:
            self._on_idle(self)

    def _records(self):
        try:
            return self.zone.current()
        except Exception as exc:  # noqa: BLE001 -- a store that cannot be read: SERVFAIL, logged
            self.log(f"dns {self.network}: cannot read the store: {type(exc).__name__}: {exc}")
            return None

    def _udp(self, sock: socket.socket) -> None:
        for _ in range(UDP_BATCH):
            try:
                wire, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. an ICMP error queued on the socket
            records = self._records()
            if records is None:
                reply = answer.servfail(wire)
            else:
                reply = self._cache.get(records, wire)
                if reply is None:
                    reply = answer.respond(records, wire, limit=answer.UDP_DEFAULT)
                    self._cache.put(records, wire, reply)
            if isinstance(reply, answer.Forward):
                self._forward(reply.query, records, lambda wire, s=sock, p=peer: _sendto(s, wire, p),
                              answer.udp_limit(reply.query))
            elif reply:
                _sendto(sock, reply, peer)

    def _accept(self, sock: socket.socket) -> None:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        client = peer[0]
        with self._tcp_clients_lock:
            held = self._tcp_clients.get(client, 0)
            if held >= MAX_TCP_PER_CLIENT or not self._tcp_slots.acquire(blocking=False):
                conn.close()  # too many at once: the client retries
                return
            self._tcp_clients[client] = held + 1
        try:
            threading.Thread(target=self._tcp, args=(conn, client), name="cnmd-dns-tcp", daemon=True).start()
        except BaseException:
            self._tcp_done(client)
            conn.close()

    def _tcp_done(self, client: str) -> None:
        with self._tcp_clients_lock:
            held = self._tcp_clients.pop(client, 1) - 1
            if held:
                self._tcp_clients[client] = held
            self._tcp_slots.release()

    def _tcp(self, conn: socket.socket, client: str) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(TCP_IDLE)
            deadline = time.monotonic() + TCP_LIFETIME
            for _ in range(MAX_TCP_QUERIES):
                head = _recv_exact(conn, 2, deadline)
                if head is None:
                    return
                wire = _recv_exact(conn, struct.unpack("!H", head)[0], deadline)
                if wire is None:
                    return
                records = self._records()
                reply = answer.servfail(wire) if records is None else answer.respond(records, wire, limit=None)
                if isinstance(reply, answer.Forward):
                    reply = self._forwarded(reply.query, records, tcp=True, limit=65535)
                if not reply:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            self._tcp_done(client)

    # ---- forwarding -----------------------------------------------------------------------
    def _forward(self, query, records, send, limit: int) -> None:
        if not self._pending.acquire(blocking=False):
            send(answer.servfail_of(query))
            return

        def work():
            try:
                reply = self._forwarded(query, records, tcp=False, limit=limit)
                if reply:
                    send(reply)
            finally:
                self._pending.release()

        try:
            self._forwarders.submit(work)
        except RuntimeError:  # shutting down
            self._pending.release()

    def upstreams(self, records) -> list[str]:
        return upstreams(records, self._own_addresses())

    def _forwarded(self, query, records, tcp: bool, limit: int) -> bytes:
        for upstream in self.upstreams(records):
            try:
                if tcp:
                    reply = dns.query.tcp(query, upstream, timeout=FORWARD_TIMEOUT)
                else:
                    reply = dns.query.udp(query, upstream, timeout=FORWARD_TIMEOUT, ignore_unexpected=True,
                                          raise_on_truncation=False)
            except (dns.exception.DNSException, OSError, ValueError, EOFError):
                continue
            return answer.to_wire(reply, limit)
        return answer.servfail_of(query)


def upstreams(records, own) -> list[str]:
    """Where a network forwards: its `dnsUpstreams` (none when the list is empty), else the
    host's resolvers; never an address a server of ours listens on (`own`)."""
    if records is not None and records.upstreams is not None:
        chosen = list(records.upstreams)
    else:
        chosen = host_resolvers()
    return [u for u in chosen if u not in own]


def _sendto(sock: socket.socket, wire: bytes, peer) -> None:
    try:
        sock.sendto(wire, peer)
    except OSError:
        pass  # the client is gone, or its buffer full: it asks again


def _recv_exact(conn: socket.socket, size: int, deadline: float) -> bytes | None:
    chunks, got = [], 0
    while got < size:
        if time.monotonic() > deadline:
            return None
        chunk = conn.recv(min(size - got, 65536))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


_resolvers: tuple[float, list[str]] | None = None
RESOLV_CONF = "/etc/resolv.conf"


def host_resolvers() -> list[str]:
    """The nameservers of the host's resolv.conf (read again when it changes)."""
    global _resolvers
    try:
        mtime = os.stat(RESOLV_CONF).st_mtime
    except OSError:
        return []
    if _resolvers is None or _resolvers[0] != mtime:
        import dns.resolver

        try:
            servers = list(dns.resolver.Resolver(filename=RESOLV_CONF).nameservers)
        except Exception:  # noqa: BLE001 -- unreadable or without nameservers
            servers = []
        _resolvers = (mtime, [str(s) for s in servers])
    return _resolvers[1]
