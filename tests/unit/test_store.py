"""The CNM store: SQLite in WAL mode, a schema version, private files, one transaction
per command, and where it lives (default, $CNM_STATE_DIR, config key stateDir)."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading

import pytest

from cni_plugins.cli.plugin import handle
from cni_plugins.cnm.model import Endpoint, Network, Sandbox, endpoint_id
from cni_plugins.cnm.store import DB_NAME, DEFAULT_STATE_DIR, SCHEMA_VERSION, STATE_DIR_ENV, Store, StoreError, state_dir


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "state" / "sub"))


def fill(tx):
    tx.put_network(Network("net1", "null", {"a": 1}, {"b": [2]}))
    tx.put_sandbox(Sandbox("sb1", "/run/netns/x", 4, 4026531840, "/run/cnm/netns/sb1", {"k": "v"}))
    eid = endpoint_id("net1", "c1", "eth0")
    tx.put_endpoint(Endpoint(eid, "net1", "sb1", "c1", "eth0", "null", True, {"mac": "aa"}))
    return eid


def test_wal_schema_version_and_private_files(store, tmp_path):
    with store.transaction() as tx:
        fill(tx)
        # While a connection is open the -wal and -shm files exist: all of them private.
        for suffix in ("", "-wal", "-shm"):
            path = store.path + suffix
            assert os.path.exists(path), path
            assert mode(path) == 0o600, (path, oct(mode(path)))
    assert mode(store.directory) == 0o700
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    finally:
        conn.close()


def test_files_stay_private_under_a_permissive_umask(store):
    old = os.umask(0)
    try:
        with store.transaction() as tx:
            fill(tx)
            assert mode(store.path) == 0o600
            assert mode(store.path + "-wal") == 0o600
    finally:
        os.umask(old)
    assert mode(store.directory) == 0o700


def test_round_trip_of_every_object(store):
    with store.transaction() as tx:
        eid = fill(tx)
    with store.transaction(write=False) as tx:
        assert tx.get_network("net1") == Network("net1", "null", {"a": 1}, {"b": [2]})
        assert tx.list_networks() == [tx.get_network("net1")]
        sb = tx.get_sandbox("sb1")
        assert sb == Sandbox("sb1", "/run/netns/x", 4, 4026531840, "/run/cnm/netns/sb1", {"k": "v"})
        assert tx.find_sandbox_by_netns(4, 4026531840) == sb
        assert tx.find_sandbox_by_netns(4, 1) is None
        assert tx.find_sandbox_of_container("c1") == sb
        ep = tx.get_endpoint(eid)
        assert (ep.network, ep.sandbox, ep.container_id, ep.ifname, ep.active, ep.data) == (
            "net1", "sb1", "c1", "eth0", True, {"mac": "aa"})
        assert tx.list_endpoints(sandbox="sb1") == [ep] == tx.list_endpoints(network="net1")
        assert tx.list_endpoints(sandbox="other") == []
    with store.transaction() as tx:
        tx.delete_endpoint(eid)
        tx.delete_sandbox("sb1")
        tx.delete_network("net1")
    with store.transaction(write=False) as tx:
        assert tx.list_endpoints() == [] and tx.list_sandboxes() == [] and tx.list_networks() == []


def test_a_failed_command_leaves_the_old_state(store):
    with store.transaction() as tx:
        fill(tx)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.delete_sandbox("sb1")
            tx.put_network(Network("net2", "null"))
            raise RuntimeError("killed half way")
    with store.transaction(write=False) as tx:
        assert tx.get_sandbox("sb1") is not None and tx.get_network("net2") is None


def test_write_transactions_are_serialised(store):
    """A write transaction holds the lock: a second writer waits until the first commits."""
    with store.transaction() as tx:
        tx.put_network(Network("counter", "null", data={"n": 0}))
    errors = []

    def bump():
        try:
            for _ in range(10):
                with store.transaction() as tx:
                    net = tx.get_network("counter")
                    net.data["n"] += 1
                    tx.put_network(net)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with store.transaction(write=False) as tx:
        assert tx.get_network("counter").data["n"] == 40


def test_a_newer_schema_is_refused(store):
    with store.transaction():
        pass
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError):
        with store.transaction():
            pass


def test_an_unusable_store_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        with Store(str(blocker / "state")).transaction():
            pass


# ---- where the store lives -------------------------------------------------------------------


def test_state_dir_precedence():
    assert state_dir(None, {}) == DEFAULT_STATE_DIR == "/var/lib/cni/cnm"
    assert state_dir(None, {STATE_DIR_ENV: "/tmp/e"}) == "/tmp/e"
    assert state_dir("/tmp/c", {STATE_DIR_ENV: "/tmp/e"}) == "/tmp/c"


def _status(env, **extra):
    stdin = json.dumps({"cniVersion": "1.1.0", "name": "net1", "type": "cnm-none", **extra}).encode()
    return handle("cnm-none", dict(env, CNI_COMMAND="STATUS"), stdin)


def test_plugin_uses_env_state_dir(tmp_path):
    env_dir = tmp_path / "from-env"
    r = _status({STATE_DIR_ENV: str(env_dir)})
    assert r.exit_code == 0, r
    assert (env_dir / DB_NAME).exists() and mode(env_dir) == 0o700 and mode(env_dir / DB_NAME) == 0o600


def test_config_key_state_dir_wins_over_env(tmp_path):
    env_dir, conf_dir = tmp_path / "from-env", tmp_path / "from-conf"
    r = _status({STATE_DIR_ENV: str(env_dir)}, stateDir=str(conf_dir))
    assert r.exit_code == 0, r
    assert (conf_dir / DB_NAME).exists() and not env_dir.exists()


def test_unusable_state_dir_is_code_50(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _status({}, stateDir=str(blocker / "state"))
    assert r.exit_code != 0 and json.loads(r.stdout)["code"] == 50


@pytest.mark.parametrize("bad", ["relative", "", 5, ["/tmp"]])
def test_bad_state_dir_is_code_7(tmp_path, bad):
    r = _status({STATE_DIR_ENV: str(tmp_path / "e")}, stateDir=bad)
    assert r.exit_code != 0 and json.loads(r.stdout)["code"] == 7


def test_sandboxes_of_a_previous_boot_match_no_netns(store):
    """nsfs inode numbers are reused after a reboot: old sandboxes must not match a new netns."""
    with store.transaction() as tx:
        fill(tx)
        tx.put_sandbox(Sandbox("host", "/proc/self/ns/net", 4, 4026531840 + 152))
    with store.transaction(write=False) as tx:  # same boot: identities kept
        assert tx.find_sandbox_by_netns(4, 4026531840).id == "sb1"
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE meta SET value='an-earlier-boot' WHERE key='boot_id'")
    conn.commit()
    conn.close()
    with store.transaction(write=False) as tx:
        assert tx.find_sandbox_by_netns(4, 4026531840) is None
        sb = tx.get_sandbox("sb1")
        assert (sb.ns_dev, sb.ns_ino) == (0, 0) and sb.pin == "/run/cnm/netns/sb1"  # the record itself stays
        host = tx.get_sandbox("host")
        assert (host.ns_dev, host.ns_ino) == (4, 4026531840 + 152)
        assert len(tx.list_endpoints(sandbox="sb1")) == 1


# ---- connections kept by the resident helper (store.keep_connections) ------------------------
@pytest.fixture
def kept():
    from cni_plugins.cnm import store as store_module

    store_module.keep_connections(True)
    yield store_module._idle
    store_module.keep_connections(False)
    with store_module._idle._lock:
        idle, store_module._idle._idle[:] = list(store_module._idle._idle), []
    for _, _, conn in idle:
        conn.close()


def test_kept_connection_is_reused_and_sees_other_writers(store, kept):
    with store.transaction() as tx:
        tx.put_network(Network("kept", "bridge", {}))
    with store.transaction() as tx:
        first = tx.conn
    with Store(store.directory).transaction() as tx:
        assert tx.conn is first  # reused, not reopened
    other = sqlite3.connect(store.path)  # another process's write is seen by the kept connection
    other.execute("DELETE FROM networks WHERE name='kept'")
    other.commit()
    other.close()
    with store.transaction() as tx:
        assert tx.get_network("kept") is None


def test_kept_connection_is_dropped_when_the_state_dir_is_made_again(store, kept, tmp_path):
    import shutil

    with store.transaction() as tx:
        tx.put_network(Network("old", "bridge", {}))
    shutil.rmtree(store.directory)
    with store.transaction() as tx:  # a new, empty store: not the deleted file's
        assert tx.get_network("old") is None
        tx.put_network(Network("new", "bridge", {}))
    assert sqlite3.connect(store.path).execute("SELECT name FROM networks").fetchall() == [("new",)]


def test_kept_connections_serve_concurrent_commands_apart(store, kept):
    inside = threading.Barrier(2, timeout=30)
    conns = []

    def reader():
        with store.transaction(write=False) as tx:
            conns.append(tx.conn)
            inside.wait()  # both transactions open at once: two connections

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(conns) == 2 and conns[0] is not conns[1]
    assert len(kept._idle) == 2


def test_a_failed_transaction_does_not_keep_its_connection(store, kept):
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            raise RuntimeError("boom")
    assert len(kept._idle) == 1  # rolled back cleanly: kept
    with pytest.raises(StoreError):
        os.chmod(store.path, 0)
        os.unlink(store.path)
        os.mkdir(store.path)  # the db path is now a directory: the kept connection is not used
        with store.transaction():
            pass
    os.rmdir(store.path)


def test_writers_in_one_process_run_one_at_a_time(store):
    """Twenty threads writing at once (the helper's concurrent commands): they queue on the
    in-process writer lock, one write transaction at a time, and every write lands."""
    import time

    with store.transaction() as tx:
        fill(tx)
    order = []

    def writer(i):
        with store.transaction() as tx:
            order.append(("in", i))
            tx.put_network(Network(f"n{i}", "bridge", {}))
            time.sleep(0.002)
            order.append(("out", i))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # strictly one writer at a time
    assert all(order[k][0] == "in" and order[k + 1] == ("out", order[k][1]) for k in range(0, len(order), 2))
    with store.transaction(write=False) as tx:
        assert {n.name for n in tx.list_networks()} >= {f"n{i}" for i in range(20)}


def test_store_id_is_kept_in_the_state_dir_and_never_reused(tmp_path):
    """Attack on issue 20's fixes: the id was derived from the directory's inode, which a new
    directory made where a deleted store was may get again (then its sweeps took the old
    store's leftovers for its own), and which a restore from a copy changes."""
    import hashlib
    import shutil

    from cni_plugins.cnm.store import Store

    directory = tmp_path / "state"
    store = Store(str(directory))
    with store.transaction() as tx:
        tx.meta("schema_version")
    first = store.id()
    assert first and Store(str(directory)).id(create=False) == first
    st = os.stat(directory)
    derived = hashlib.sha256(f"cnm-store:{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:32]
    assert first != derived
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    assert Store(str(copy)).id() == first  # a restored copy is the same store
    shutil.rmtree(directory)
    assert Store(str(directory)).id() != first  # a new store where one was deleted is another

    legacy = tmp_path / "legacy"
    store = Store(str(legacy))
    with store.transaction() as tx:
        tx.meta("schema_version")
    os.unlink(legacy / "store-id")  # as a build that derived the id from the inode left it
    st = os.stat(legacy)
    assert store.id() == hashlib.sha256(f"cnm-store:{st.st_dev}:{st.st_ino}".encode()).hexdigest()[:32]
