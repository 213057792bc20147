"""The CNM store: SQLite (WAL), one transaction per command, a schema version.

The interface is small (get/put/delete/list inside a transaction) so another
backend can stand behind it later.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from ..linux.fs import make_dirs
from .model import HOST_SANDBOX, Endpoint, Network, Sandbox

SCHEMA_VERSION = 2
DEFAULT_STATE_DIR = "/var/lib/cni/cnm"
STATE_DIR_ENV = "CNM_STATE_DIR"
DB_NAME = "cnm.db"
ID_FILE = "store-id"
BUSY_TIMEOUT_S = 120.0  # kubelet gives a pod two minutes; never fail earlier on a busy lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS networks(
    name TEXT PRIMARY KEY, driver TEXT NOT NULL, options TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes(
    id TEXT PRIMARY KEY, netns TEXT NOT NULL, ns_dev INTEGER NOT NULL, ns_ino INTEGER NOT NULL,
    pin TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS endpoints(
    id TEXT PRIMARY KEY, network TEXT NOT NULL, sandbox TEXT NOT NULL, container_id TEXT NOT NULL,
    ifname TEXT NOT NULL, driver TEXT NOT NULL, active INTEGER NOT NULL, data TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'ready');
CREATE INDEX IF NOT EXISTS endpoints_sandbox ON endpoints(sandbox);
CREATE INDEX IF NOT EXISTS endpoints_container ON endpoints(container_id);
CREATE INDEX IF NOT EXISTS sandboxes_ns ON sandboxes(ns_dev, ns_ino);
"""

# From one schema version to the next (applied in order, each in the opening transaction).
MIGRATIONS = {
    # 1 -> 2: an endpoint's phase (its intent is recorded before the kernel is touched).
    2: ["ALTER TABLE endpoints ADD COLUMN phase TEXT NOT NULL DEFAULT 'ready'"],
}


class StoreError(Exception):
    pass


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_KEY = "boot"  # sandbox.data: the boot it was made in (UNKNOWN_BOOT when unreadable then)
UNKNOWN_BOOT = "unknown"  # also what an older version stored when it could not read it


def boot_id() -> str | None:
    """This boot's id; None when it cannot be read (no /proc, ProcSubset=pid, a chroot):
    then no boot is ever guessed to be a new one."""
    try:
        with open(BOOT_ID_PATH) as f:
            value = f.read().strip()
    except OSError:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def state_dir(config_dir: str | None = None, env: dict | None = None) -> str:
    """Config key `stateDir` wins over $CNM_STATE_DIR, which wins over the default."""
    env = os.environ if env is None else env
    return config_dir or env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


def _enable_wal(conn: sqlite3.Connection) -> None:
    """PRAGMA journal_mode=WAL, waiting out other processes that switch a new store at the
    same moment: SQLite answers "database is locked" there without its busy handler."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _IdleConnections:
    """Open connections a long-lived process (the helper, cnmd) keeps between commands.

    Opening a connection costs its pragmas and checks, and closing the last one makes
    SQLite checkpoint the WAL with an fsync: ~0.5 ms on an idle disk, tens of ms on a busy
    one, twice per command. A kept connection is used by one command at a time and only
    while its file is the one at the store's path (a state directory removed and made
    again gets new connections); a write on a read-only mount is refused before one is
    taken (Store.transaction). Off by default: a plugin process runs one command."""

    MAX_IDLE = 8

    def __init__(self):
        self.enabled = False
        self._lock = threading.Lock()
        self._idle: list[tuple[str, tuple[int, int], sqlite3.Connection]] = []

    def take(self, path: str) -> sqlite3.Connection | None:
        if not self.enabled:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        with self._lock:
            for i, (p, ident, conn) in enumerate(self._idle):
                if p == path and ident == (st.st_dev, st.st_ino):
                    del self._idle[i]
                    return conn
        return None

    def give(self, path: str, conn: sqlite3.Connection) -> None:
        """Keep `conn` (out of any transaction) for the next command on `path`, or close it."""
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if not self.enabled or st is None or conn.in_transaction:
            conn.close()
            return
        with self._lock:
            self._idle.append((path, (st.st_dev, st.st_ino), conn))
            evicted = self._idle[: -self.MAX_IDLE]
            del self._idle[: -self.MAX_IDLE]
        for _, _, old in evicted:
            old.close()


_idle = _IdleConnections()


def _read_id(path: str) -> str:
    try:
        with open(path) as f:
            value = f.read().strip()
    except FileNotFoundError:
        return ""
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise StoreError(f"{path} does not hold a store id")
    return value

# One writer at a time per store inside this process, queued on a lock: SQLite's own busy
# handler makes a waiting writer sleep 1, 2, 5, ... up to 100 ms between tries, so twenty
# concurrent commands in the helper would spend most of their time asleep. Other processes
# still meet SQLite's lock (BEGIN IMMEDIATE) as before.
_writers_lock = threading.Lock()
_writers: dict[str, threading.RLock] = {}


def _writer_lock(path: str) -> threading.RLock:
    with _writers_lock:
        lock = _writers.get(path)
        if lock is None:
            lock = _writers[path] = threading.RLock()
        return lock


def keep_connections(enabled: bool = True) -> None:
    """Keep connections open between commands (for the resident helper)."""
    _idle.enabled = enabled


class Store:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, DB_NAME)

    def _connect(self) -> sqlite3.Connection:
        make_dirs(self.directory, 0o700)
        if not os.path.exists(self.path):
            self.id(create=True)  # a new store's id is random (see _first_id)
        old = os.umask(0o077)  # the db, -wal and -shm files are created 0600
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
            self._forget_previous_boot(conn)
        finally:
            os.umask(old)
        return conn

    @staticmethod
    def _forget_previous_boot(conn: sqlite3.Connection) -> None:
        """After a reboot no recorded netns exists any more (the pins under /run are gone),
        but nsfs inode numbers are reused: a new netns could match an old sandbox's
        (dev, ino). Void the identities of sandboxes recorded in an earlier boot, so
        they match nothing and their DEL skips in-netns work. (The host sandbox is
        looked up by id, not identity.)

        A sandbox's boot is the one it records (data["boot"]: made by a process that could
        not read the boot id records "unknown", and is never voided for a boot change), else
        the store's (recorded by an older version). A process that cannot read the boot id
        changes nothing here: it can neither tell a reboot nor stamp the store."""
        boot = boot_id()
        if boot is None:  # unknown: nothing is voided (a guess would tear down live pods)
            return
        row = conn.execute("SELECT value FROM meta WHERE key='boot_id'").fetchone()
        if row is not None and row[0] == boot:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='boot_id'").fetchone()
            stored = row[0] if row is not None else None
            if stored != boot:
                earlier = []
                for sb_id, data in conn.execute(
                        "SELECT id, data FROM sandboxes WHERE id != ? AND NOT (ns_dev=0 AND ns_ino=0)", (HOST_SANDBOX,)):
                    made_in = (json.loads(data) or {}).get(BOOT_KEY) or stored
                    if made_in not in (None, UNKNOWN_BOOT, boot):
                        earlier.append(sb_id)
                for sb_id in earlier:
                    conn.execute("UPDATE sandboxes SET ns_dev=0, ns_ino=0 WHERE id=?", (sb_id,))
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('boot_id', ?)", (boot,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        row = None
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError:
            pass
        if row is not None:
            if int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"store schema {row[0]} is newer than this plugin's {SCHEMA_VERSION}")
            if int(row[0]) == SCHEMA_VERSION:
                return
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if row else None
            version = int(row[0]) if row else 0
            if version == 0:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(statement)
            else:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(step, ()):
                        conn.execute(statement)
                for statement in filter(str.strip, SCHEMA.split(";")):  # new indexes
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def id(self, create: bool = True) -> str:
        """The store's identity, which tags every kernel object it makes (model.owner_tag):
        a random id kept in the state directory (ID_FILE), so it is the same for every process
        that opens this store (from any mount namespace), survives a lost or deleted database
        file (whose objects then remain provably this store's), and is never another store's,
        also not one made later in a directory with the same path or inode. Without `create`
        (read-only views): "" when the store has none yet (then nothing can carry it)."""
        path = os.path.join(self.directory, ID_FILE)
        value = _read_id(path)
        if value or not create:
            return value

        make_dirs(self.directory, 0o700)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (self._first_id() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces an id another process wrote first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        return _read_id(path)

    def _first_id(self) -> str:
        """Random; for a database written before the id file existed, the id that build
        derived from the directory's inode, so the objects it tagged stay this store's."""
        if os.path.exists(self.path):
            st = os.stat(self.directory)
            return hashlib.sha256(f"cnm-store:{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:32]
        return uuid.uuid4().hex

    @contextmanager
    def read_only(self) -> Iterator["Transaction | None"]:
        """A read transaction that never creates or changes anything (operator views): None
        when there is no store yet. A store of an older schema is read as it is."""
        if not os.path.exists(self.path):
            yield None
            return
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30, isolation_level=None)
            conn.execute("BEGIN")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None
        try:
            yield Transaction(conn, legacy=row is not None and int(row[0]) < 2)
        finally:
            conn.close()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator["Transaction"]:
        """One transaction; a write transaction holds the store's write lock throughout."""
        if not write:
            with self._transaction(False) as tx:
                yield tx
            return
        try:
            read_only = bool(os.statvfs(self.directory).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False  # not made yet: _connect makes it or says why not
        if read_only:  # said plainly, and before a kept connection (opened earlier) could write
            raise StoreError(f"cannot write store {self.path}: read-only file system")
        lock = _writer_lock(self.path)
        if not lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise StoreError(f"store {self.path} is busy: no write lock in {BUSY_TIMEOUT_S:.0f} s")
        try:
            with self._transaction(True) as tx:
                yield tx
        finally:
            lock.release()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator["Transaction"]:
        conn = _idle.take(self.path)
        if conn is None:
            try:
                conn = self._connect()
            except (sqlite3.Error, OSError) as exc:  # OSError: the directory cannot be made
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        clean = False
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            tx = Transaction(conn)
            try:
                yield tx
            except BaseException:
                conn.execute("ROLLBACK")
                clean = True
                raise
            conn.execute("COMMIT")
            clean = True
        finally:
            if clean:
                _idle.give(self.path, conn)
            else:
                conn.close()


class Reader:
    """A read-only connection a long-lived reader keeps open (the name server): version()
    changes whenever another connection committed (SQLite's data_version, a read of the
    WAL index), so such a reader re-reads the store only after a change."""

    def __init__(self, directory: str):
        self.path = os.path.join(directory, DB_NAME)
        try:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, isolation_level=None,
                                        check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None

    def version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    @contextmanager
    def transaction(self) -> Iterator["Transaction"]:
        self.conn.execute("BEGIN")
        try:
            yield Transaction(self.conn)
        finally:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class Transaction:
    """Every query of the store (nothing outside cnm/ writes SQL)."""

    def __init__(self, conn: sqlite3.Connection, legacy: bool = False):
        self.conn = conn
        # A schema-1 store read by an operator view: endpoints have no phase column yet.
        self._ep_select = _EP_LEGACY if legacy else _EP

    # ---- meta -------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    def made_in_earlier_boot(self, sb: Sandbox) -> bool:
        """`sb` was made in an earlier boot (False when either boot is unknown): a read-only view
        of what the next writer voids (Store._forget_previous_boot)."""
        made_in, now = sb.data.get(BOOT_KEY) or self.meta("boot_id"), boot_id()
        return made_in not in (None, UNKNOWN_BOOT) and now is not None and made_in != now

    # ---- networks ---------------------------------------------------------------------
    def get_network(self, name: str) -> Network | None:
        row = self.conn.execute("SELECT name, driver, options, data FROM networks WHERE name=?", (name,)).fetchone()
        return Network(row[0], row[1], json.loads(row[2]), json.loads(row[3])) if row else None

    def put_network(self, net: Network) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO networks(name, driver, options, data) VALUES(?,?,?,?)",
            (net.name, net.driver, json.dumps(net.options, sort_keys=True), json.dumps(net.data, sort_keys=True)),
        )

    def delete_network(self, name: str) -> None:
        self.conn.execute("DELETE FROM networks WHERE name=?", (name,))

    def list_networks(self) -> list[Network]:
        rows = self.conn.execute("SELECT name, driver, options, data FROM networks ORDER BY name").fetchall()
        return [Network(r[0], r[1], json.loads(r[2]), json.loads(r[3])) for r in rows]

    # ---- sandboxes --------------------------------------------------------------------
    _SB = "SELECT id, netns, ns_dev, ns_ino, pin, data FROM sandboxes"

    @staticmethod
    def _sandbox(row) -> Sandbox | None:
        return Sandbox(row[0], row[1], row[2], row[3], row[4], json.loads(row[5])) if row else None

    def get_sandbox(self, sandbox_id: str) -> Sandbox | None:
        return self._sandbox(self.conn.execute(self._SB + " WHERE id=?", (sandbox_id,)).fetchone())

    def find_sandbox_by_netns(self, dev: int, ino: int) -> Sandbox | None:
        return self._sandbox(self.conn.execute(self._SB + " WHERE ns_dev=? AND ns_ino=?", (dev, ino)).fetchone())

    def find_sandbox_of_container(self, container_id: str) -> Sandbox | None:
        """The sandbox a container is an active member of."""
        row = self.conn.execute(
            "SELECT sandbox FROM endpoints WHERE container_id=? AND active=1 LIMIT 1", (container_id,)
        ).fetchone()
        return self.get_sandbox(row[0]) if row else None

    def put_sandbox(self, sb: Sandbox) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO sandboxes(id, netns, ns_dev, ns_ino, pin, data) VALUES(?,?,?,?,?,?)",
            (sb.id, sb.netns, sb.ns_dev, sb.ns_ino, sb.pin, json.dumps(sb.data, sort_keys=True)),
        )

    def delete_sandbox(self, sandbox_id: str) -> None:
        self.conn.execute("DELETE FROM sandboxes WHERE id=?", (sandbox_id,))

    def list_sandboxes(self) -> list[Sandbox]:
        return [self._sandbox(r) for r in self.conn.execute(self._SB + " ORDER BY id").fetchall()]

    def sandboxes_by_id(self, ids) -> list[Sandbox]:
        ids, out = sorted(set(ids)), []
        for i in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            part = ids[i:i + 500]
            out += [self._sandbox(r) for r in
                    self.conn.execute(self._SB + f" WHERE id IN ({','.join('?' * len(part))})", part)]
        return out

    def sandboxes_to_check(self, identity: tuple[int, int], containers, cursor: str, size: int) -> tuple[list[Sandbox], str]:
        """ADD's bounded look at the sandboxes (reconcile.VanishedCheck): those recorded in an
        earlier boot, the one of netns `identity`, those of `containers`, and `size` more in id
        order after `cursor` (wrapping around). Returns them and the next cursor."""
        containers = sorted(set(containers) - {None, ""}) or [""]
        marks = ",".join("?" * len(containers))
        found = {sb.id: sb for sb in map(self._sandbox, self.conn.execute(
            self._SB + " WHERE (ns_dev=0 AND ns_ino=0) OR (ns_dev=? AND ns_ino=?)"
            f" OR id IN (SELECT sandbox FROM endpoints WHERE container_id IN ({marks}))", (*identity, *containers)))}
        batch: list = []
        if size > 0:
            batch = self.conn.execute(self._SB + " WHERE id > ? ORDER BY id LIMIT ?", (cursor, size)).fetchall()
            if len(batch) < size and cursor:  # wrap around
                batch += self.conn.execute(self._SB + " WHERE id <= ? ORDER BY id LIMIT ?",
                                           (cursor, size - len(batch))).fetchall()
        for row in batch:
            found.setdefault(row[0], self._sandbox(row))
        next_cursor = batch[-1][0] if size > 0 and len(batch) == size else ""
        return list(found.values()), next_cursor

    # ---- endpoints --------------------------------------------------------------------
    @staticmethod
    def _endpoint(row) -> Endpoint | None:
        if not row:
            return None
        return Endpoint(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), json.loads(row[7]), row[8])

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoint(self.conn.execute(self._ep_select + " WHERE id=?", (endpoint_id,)).fetchone())

    def put_endpoint(self, ep: Endpoint) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO endpoints(id, network, sandbox, container_id, ifname, driver, active, data, phase)"
            " VALUES(?,?,?,?,?,?,?,?,?)",
            (ep.id, ep.network, ep.sandbox, ep.container_id, ep.ifname, ep.driver, int(ep.active),
             json.dumps(ep.data, sort_keys=True), ep.phase),
        )

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.conn.execute("DELETE FROM endpoints WHERE id=?", (endpoint_id,))

    def list_endpoints(self, sandbox: str | None = None, network: str | None = None) -> list[Endpoint]:
        clauses, params = [], []
        if sandbox is not None:
            clauses.append("sandbox=?")
            params.append(sandbox)
        if network is not None:
            clauses.append("network=?")
            params.append(network)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.conn.execute(self._ep_select + where + " ORDER BY id", params).fetchall()
        return [self._endpoint(r) for r in rows]

    def endpoint_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM endpoints")}

    def sandbox_ids(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT id FROM sandboxes")}

    def sandboxes_in_use(self) -> set[str]:
        """Ids of the sandboxes some endpoint record names."""
        return {row[0] for row in self.conn.execute("SELECT DISTINCT sandbox FROM endpoints")}


_EP = "SELECT id, network, sandbox, container_id, ifname, driver, active, data, phase FROM endpoints"
_EP_LEGACY = "SELECT id, network, sandbox, container_id, ifname, driver, active, data, 'ready' FROM endpoints"
