"""Node-wide reconciliation: make the kernel and the lease files agree with the CNM store.

The store is the record (DESIGN.md §3). What can disagree with it after a crash, a
missed DEL or a reboot, and what this module does about it:

  vanished sandbox   its netns is gone (neither our pin nor the runtime's path is that
                     netns any more, or it was recorded in an earlier boot): its endpoints
                     are torn down through their own drivers (veth, nft, lease), then the
                     sandbox goes
  empty sandbox      a sandbox record with no endpoint: its pin is unmounted, it goes
  orphan pin         a file in the pin directory with no sandbox: unmounted, removed
  orphan veth        a host link named cnm + 12 hex that no endpoint owns: deleted
  orphan nft element an element of our tables whose owner (comment) is no endpoint
  orphan lease       a cnm-ipam lease, in a lease directory some endpoint's recorded IPAM
                     config names, whose (containerID, ifname) has no endpoint there

Everything runs inside one store write transaction: that is the node-wide lock every
ADD/DEL holds from start to commit, so nothing in flight can look like an orphan.
Assumption: one CNM store per host network namespace (the default stateDir, or the
same CNM_STATE_DIR for every network). Veths and nft elements are node-wide kernel
objects; a store cannot tell another store's from an orphan, so networks that set
their own `stateDir` on one node must not rely on orphan sweeping.
Used by the controller (ADD: vanished sandboxes; GC: vanished sandboxes and orphans)
and by `cnmctl gc` (all of it). Errors are collected, never stop the sweep.

ADD's check is bounded (VanishedCheck): GC and `cnmctl gc` stat every sandbox, an ADD
only what can have vanished unseen, so its cost does not grow with the pods on the node.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field

from .cni.errors import (DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_ENV, INVALID_NETNS, UNSUPPORTED_FIELD,
                         CNIError)
from .cni.request import Request, parse
from .cnm.model import HOST_SANDBOX, Sandbox
from .cnm.store import Store, StoreError

OUR_VETH = re.compile(r"^cnm[0-9a-f]{12}$")  # drivers/bridge host_veth_name()
OUR_OWNER = re.compile(r"^[0-9a-f]{24}$")  # cnm.model.endpoint_id()


@dataclass
class Action:
    kind: str  # endpoint, sandbox, pin, veth, nft, lease
    name: str
    detail: str = ""
    error: str = ""


@dataclass
class Report:
    actions: list[Action] = field(default_factory=list)

    def add(self, kind: str, name: str, detail: str = "", error: str = "") -> None:
        self.actions.append(Action(kind, name, detail, error))

    @property
    def errors(self) -> list[Action]:
        return [a for a in self.actions if a.error]

    def as_json(self) -> dict:
        return {"removed": [asdict(a) for a in self.actions if not a.error],
                "errors": [asdict(a) for a in self.errors]}


# ---- vanished sandboxes --------------------------------------------------------------------
def sandbox_alive(sb_id: str, pin: str, ns_dev: int, ns_ino: int, path: str = "") -> bool:
    """Its netns still exists: our pin -- or else the runtime's path (a pin made in another
    mount namespace is invisible here) -- is a mount of exactly that namespace."""
    if sb_id == HOST_SANDBOX:
        return True
    if (ns_dev, ns_ino) == (0, 0):  # voided: recorded in an earlier boot
        return False
    return _pinned(pin, ns_dev, ns_ino) or _pinned(path, ns_dev, ns_ino)


_ROW = "SELECT id, pin, ns_dev, ns_ino, netns FROM sandboxes"


def vanished_sandboxes(tx, rows=None) -> list[Sandbox]:
    """Every sandbox whose netns is gone (all of them checked: GC, `cnmctl gc`)."""
    if rows is None:
        rows = tx.conn.execute(_ROW).fetchall()
    dead = [r[0] for r in rows if not sandbox_alive(*r)]
    return [sb for sb in (tx.get_sandbox(i) for i in dead) if sb is not None]


def _pinned(path: str, ns_dev: int, ns_ino: int) -> bool:
    """`path` (our pin, or the runtime's path), visible here, is exactly that netns. A pin
    that is keeps the netns alive."""
    if not path:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (ns_dev, ns_ino)


def _gc_request(request: Request | None, network: str, env) -> Request:
    """A request to tear endpoints down with (each endpoint then replays its own ADD)."""
    if request is not None:
        return request
    env = dict(env, CNI_COMMAND="GC", CNI_CONTAINERID="", CNI_NETNS="", CNI_IFNAME="", CNI_ARGS="")
    stdin = json.dumps({"cniVersion": "1.1.0", "name": network or "cnm-reconcile", "type": "cnm-none"})
    return parse(env, stdin.encode())


def release_sandbox(controller, tx, sandbox: Sandbox, request: Request | None, env, report: Report) -> None:
    """Tear down every endpoint of a sandbox whose netns is gone, then the sandbox."""
    from .linux import netns

    failed = False
    for ep in tx.list_endpoints(sandbox=sandbox.id):
        try:
            errors = controller._teardown_all(tx, _gc_request(request, ep.network, env), [ep], sandbox, None)
        except Exception as exc:  # one broken record must not stop the sweep
            errors = [exc]
        for err in errors:
            failed = True
            report.add("endpoint", ep.id, f"{ep.container_id}/{ep.ifname} on {ep.network}", _describe(err))
        if not errors:
            report.add("endpoint", ep.id, f"{ep.container_id}/{ep.ifname} on {ep.network}: netns gone")
    if failed:
        return
    try:
        if sandbox.pin:
            netns.unpin(sandbox.pin)
        tx.delete_sandbox(sandbox.id)
        report.add("sandbox", sandbox.id, f"netns {sandbox.netns} gone")
    except OSError as exc:
        report.add("sandbox", sandbox.id, sandbox.pin, str(exc))


def release_homeless_endpoints(controller, tx, env, report: Report) -> None:
    """Endpoints whose sandbox record is missing: nothing can reach them any more."""
    sandboxes = {row[0] for row in tx.conn.execute("SELECT id FROM sandboxes")}
    for ep in tx.list_endpoints():
        if ep.sandbox in sandboxes:
            continue
        try:
            errors = controller._teardown_all(tx, _gc_request(None, ep.network, env), [ep], None, None)
        except Exception as exc:
            errors = [exc]
        why = f"{ep.container_id}/{ep.ifname} on {ep.network}: no sandbox record"
        report.add("endpoint", ep.id, why, "; ".join(_describe(e) for e in errors))


class VanishedCheck:
    """What a process knows about one store's sandboxes between its ADDs (the resident
    helper, cnmd, serves many; a plugin process runs one ADD, and its first check is full).

    A sandbox whose pin (visible in this mount namespace) is a mount of its netns cannot
    vanish while the pin stays: the mount keeps the netns alive. So after one full check
    an ADD looks only at what can go unseen:
      - sandboxes recorded in an earlier boot (voided, ns 0:0; an indexed lookup),
      - the sandboxes this ADD's own lookups can meet: the one of its netns identity (a
        dead netns's inode number is reused by new ones), those of its container and of
        the container it joins,
      - `watch`: sandboxes that live only through the runtime's path (no pin, or the pin
        is not visible here), which can vanish at any time: every ADD,
      - ROUND sandboxes more, in id order from a cursor, so a pin unmounted behind our
        back (by an admin) is noticed within (sandboxes / ROUND) ADDs; a node of up to
        ROUND sandboxes is checked whole on every ADD, as before.
    A full check again when this process has none for the store yet, when the store file
    or the pin directory is another one (recreated: reboot, wiped /run), or the store's
    boot id changed; and when an ADD fails, if a full check then releases anything, the
    ADD runs once more (Controller.add), so a node full of vanished pods still gets its
    pod. GC and `cnmctl gc` always check everything."""

    ROUND = 8
    MAX_STORES = 64  # a helper serving many state directories (tests) keeps the latest ones

    def __init__(self, ident: tuple):
        self.ident = ident
        self.watch: set[str] = set()
        self.cursor = ""

    # per process: (store path, pin dir) -> VanishedCheck; used under the store's write lock
    _known: dict[tuple[str, str], "VanishedCheck"] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, key: tuple[str, str], ident: tuple) -> "VanishedCheck | None":
        """The remembered state, when it still applies (else None: check everything)."""
        with cls._lock:
            known = cls._known.get(key)
            return known if known is not None and known.ident == ident else None

    @classmethod
    def remember(cls, key: tuple[str, str], state: "VanishedCheck") -> None:
        with cls._lock:
            cls._known.pop(key, None)
            cls._known[key] = state
            while len(cls._known) > cls.MAX_STORES:
                cls._known.pop(next(iter(cls._known)))

    @classmethod
    def forget(cls, key: tuple[str, str]) -> None:
        with cls._lock:
            cls._known.pop(key, None)


def _identity(tx, store_path: str, pins: str) -> tuple | None:
    """What must stay the same for a remembered check to apply; None: cannot tell."""
    try:
        db, run = os.stat(store_path), os.stat(pins)
    except OSError:
        return None  # no pin directory yet (or no store file): the full check is cheap then
    row = tx.conn.execute("SELECT value FROM meta WHERE key='boot_id'").fetchone()
    return (db.st_dev, db.st_ino, run.st_dev, run.st_ino, row[0] if row else None)


def _check_key(request: Request) -> tuple[str, str]:
    """(store file, pin directory) of this request: the ADD opened that store already."""
    from .cnm.store import DB_NAME, state_dir
    from .controller import pin_dir

    return os.path.join(state_dir(request.config.get("stateDir"), request.env), DB_NAME), pin_dir(request.env)


def _full_check(tx) -> tuple[list[Sandbox], set[str]]:
    """Every sandbox: the dead ones, and the live ones that live only through their path."""
    dead, watch = [], set()
    for row in tx.conn.execute(_ROW).fetchall():
        if not sandbox_alive(*row):
            dead.append(row[0])
        elif row[0] != HOST_SANDBOX and not _pinned(row[1], row[2], row[3]):
            watch.add(row[0])
    return [sb for sb in (tx.get_sandbox(i) for i in dead) if sb is not None], watch


def _bounded_check(tx, state: VanishedCheck, request: Request, identity, target: str | None) -> list[Sandbox]:
    """The sandboxes VanishedCheck lists, each checked once; updates `state`."""
    rows: dict[str, tuple] = {}
    q = tx.conn.execute
    # voided, this ADD's netns, its container's and its join target's: one query
    own = (identity.dev, identity.ino) if identity is not None else (-1, -1)
    containers = sorted({request.container_id, target} - {None, ""}) or [""]
    marks = ",".join("?" * len(containers))
    for r in q(_ROW + " WHERE (ns_dev=0 AND ns_ino=0) OR (ns_dev=? AND ns_ino=?)"
               f" OR id IN (SELECT sandbox FROM endpoints WHERE container_id IN ({marks}))", (*own, *containers)):
        rows[r[0]] = r
    if state.watch:
        watched = sorted(state.watch)
        for i in range(0, len(watched), 500):  # SQLite's limit on bound parameters
            part = watched[i:i + 500]
            for r in q(_ROW + f" WHERE id IN ({','.join('?' * len(part))})", part):
                rows[r[0]] = r
        state.watch &= rows.keys()  # gone from the store: forget
    size, batch = VanishedCheck.ROUND, []
    if size > 0:
        batch = q(_ROW + " WHERE id > ? ORDER BY id LIMIT ?", (state.cursor, size)).fetchall()
        if len(batch) < size and state.cursor:  # wrap around
            batch += q(_ROW + " WHERE id <= ? ORDER BY id LIMIT ?", (state.cursor, size - len(batch))).fetchall()
    state.cursor = batch[-1][0] if size > 0 and len(batch) == size else ""
    for r in batch:
        rows[r[0]] = r
    dead = []
    for sb_id, (_, pin, ns_dev, ns_ino, path) in rows.items():
        if sb_id == HOST_SANDBOX:
            continue
        if (ns_dev, ns_ino) != (0, 0) and _pinned(pin, ns_dev, ns_ino):
            state.watch.discard(sb_id)
        elif (ns_dev, ns_ino) != (0, 0) and _pinned(path, ns_dev, ns_ino):
            state.watch.add(sb_id)  # alive through the runtime's path only
        else:
            state.watch.add(sb_id)  # looked at again until its release is committed
            dead.append(sb_id)
    return [sb for sb in (tx.get_sandbox(i) for i in dead) if sb is not None]


def release_vanished_sandboxes(controller, tx, request: Request, identity=None) -> Report:
    """ADD's first step: after a reboot (or pins removed) the dead sandboxes' addresses
    return to the pool; bounded, see VanishedCheck. `identity`: the netns of this ADD.
    Never fails the ADD; what cannot be released waits for GC (or the next full check)."""
    report = Report()
    key = None
    try:
        key = _check_key(request)
        ident = _identity(tx, *key)
        state = VanishedCheck.of(key, ident) if ident is not None else None
        if state is None:
            doomed, watch = _full_check(tx)
            state = VanishedCheck(ident)
            # the dead too: looked at again until their release is committed (a failing
            # ADD rolls it back)
            state.watch = watch | {sb.id for sb in doomed}
        else:
            driver = getattr(controller, "driver", None)
            target = driver.target_container(request) if getattr(driver, "joins_sandbox", False) else None
            doomed = _bounded_check(tx, state, request, identity, target)
        if ident is not None:
            VanishedCheck.remember(key, state)
        else:
            # Cannot tell (no pin directory: /run wiped): what was remembered no longer holds,
            # and a new pin directory may get the old one's inode number, so identity alone
            # would not show the change. The next ADD checks everything.
            VanishedCheck.forget(key)
        for sandbox in doomed:
            release_sandbox(controller, tx, sandbox, request, request.env, report)
    except Exception:
        if key is not None:
            VanishedCheck.forget(key)  # the next ADD checks everything
    return report


# Failures no store state can cause: no second run for those.
_NOT_STATE = (INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, INVALID_ENV, DECODE_FAILURE, INVALID_NETNS)


def release_all_vanished(controller, request: Request, error: CNIError) -> bool:
    """After a failed ADD: check every sandbox of the store (in a transaction of its own);
    True when one was released, so the ADD is worth running again (Controller.add)."""
    from .controller import open_store

    if error.code in _NOT_STATE:
        return False
    report = Report()
    try:
        with open_store(request).transaction() as tx:
            for sandbox in vanished_sandboxes(tx):
                release_sandbox(controller, tx, sandbox, request, request.env, report)
    except Exception:
        return False
    return any(a.kind == "sandbox" and not a.error for a in report.actions)


# ---- orphans -------------------------------------------------------------------------------
def sweep_orphans(tx, env, report: Report, pins: str | None = None) -> None:
    """Pins, veths and nft elements of ours that no record owns (host netns of this process)."""
    endpoint_ids = {row[0] for row in tx.conn.execute("SELECT id FROM endpoints")}
    _sweep_empty_sandboxes(tx, report)
    if pins:
        _sweep_pins(tx, pins, report)
    _sweep_veths({i[:12] for i in endpoint_ids}, report)
    _sweep_nft(endpoint_ids, report)


def _sweep_empty_sandboxes(tx, report: Report) -> None:
    from .linux import netns

    used = {row[0] for row in tx.conn.execute("SELECT DISTINCT sandbox FROM endpoints")}
    for sb in tx.list_sandboxes():
        if sb.id in used:
            continue
        try:
            if sb.pin:
                netns.unpin(sb.pin)
            tx.delete_sandbox(sb.id)
            report.add("sandbox", sb.id, "no endpoint left")
        except OSError as exc:
            report.add("sandbox", sb.id, sb.pin, str(exc))


def _sweep_pins(tx, pins: str, report: Report) -> None:
    from .linux import netns

    try:
        names = os.listdir(pins)
    except FileNotFoundError:
        return
    except OSError as exc:
        report.add("pin", pins, "", str(exc))
        return
    known = {sb.pin for sb in tx.list_sandboxes() if sb.pin}
    for name in names:
        path = os.path.join(pins, name)
        if path in known:
            continue
        try:
            netns.unpin(path)
            report.add("pin", path, "no sandbox")
        except OSError as exc:
            report.add("pin", path, "", str(exc))


def _sweep_veths(owned_prefixes: set[str], report: Report) -> None:
    from .linux import links, veth

    try:
        with links.rtnl() as ipr:
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME") or ""
                if not OUR_VETH.fullmatch(name) or name[3:] in owned_prefixes:
                    continue
                info = link.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                if kind != "veth":
                    continue
                try:
                    veth.delete(ipr, name)
                    report.add("veth", name, "no endpoint")
                except Exception as exc:
                    report.add("veth", name, "", _describe(exc))
    except Exception as exc:
        report.add("veth", "*", "listing links", _describe(exc))


def _sweep_nft(endpoint_ids: set[str], report: Report) -> None:
    from .linux import nft

    for family in nft.LAYOUT:
        try:
            # nft._elements: every element of our table of `family` with its owner comment
            found = nft._elements(family)
        except nft.NftError as exc:
            if "cannot run nft" not in str(exc):  # no nft installed: nothing of ours can exist
                report.add("nft", family, "listing", str(exc))
            continue
        try:
            if nft.repair(family):
                report.add("nft", f"table {family} {nft.TABLE}", "rules restored")
        except nft.NftError as exc:
            report.add("nft", family, "restoring rules", str(exc))
        stale: dict[str, list] = {}
        for element, comment in found:
            owner = nft.owner_of(comment or "")  # "<endpoint id>" or "<endpoint id> <note>" (published ports)
            if OUR_OWNER.fullmatch(owner) and owner not in endpoint_ids:
                stale.setdefault(owner, []).append(element)
        for owner, elements in sorted(stale.items()):
            try:
                nft.commit(remove=elements, owner=owner)
                for e in elements:
                    report.add("nft", str(e), f"owner {owner}: no endpoint")
            except nft.NftError as exc:
                report.add("nft", owner, "", str(exc))


# ---- leases --------------------------------------------------------------------------------
def lease_dirs(tx) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """(dataDir, network) of every cnm-ipam lease directory an endpoint's recorded IPAM
    call names -> the (containerID, ifname) attachments recorded there."""
    from .ipam.disk import DEFAULT_DATA_DIR

    dirs: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for ep in tx.list_endpoints():
        rec = ep.data.get("ipam") or {}
        if rec.get("type") != "cnm-ipam":
            continue
        try:
            conf = json.loads(base64.b64decode(rec["stdin"]))
            ipam = conf.get("ipam") or {}
            key = (ipam.get("dataDir") or DEFAULT_DATA_DIR, conf["name"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        env = rec.get("env") or {}
        dirs.setdefault(key, set()).add((env.get("CNI_CONTAINERID", ep.container_id), env.get("CNI_IFNAME", ep.ifname)))
    return dirs


def sweep_leases(tx, report: Report, extra: dict | None = None) -> None:
    from .ipam import allocator
    from .ipam.disk import LeaseDir, PathError

    dirs = lease_dirs(tx)
    for key, valid in (extra or {}).items():
        dirs.setdefault(key, set()).update(valid)
    for (data_dir, network), valid in sorted(dirs.items()):
        try:
            store = LeaseDir.existing(data_dir, network)
            if store is None:
                continue
            with store, store.locked():
                for addr in allocator.collect_garbage(store, valid):
                    report.add("lease", f"{network}/{addr}", f"in {data_dir}: no endpoint")
        except (OSError, PathError) as exc:
            report.add("lease", f"{data_dir}/{network}", "", str(exc))


# ---- node-wide -----------------------------------------------------------------------------
def reconcile_node(state_dir: str, run_dir: str, env=None) -> Report:
    """`cnmctl gc` without a network: everything above, one transaction."""
    from .controller import Controller

    env = dict(os.environ if env is None else env)
    env.setdefault("CNM_RUN_DIR", run_dir)
    report = Report()
    controller = Controller("null")
    try:
        with Store(state_dir).transaction() as tx:
            # Leases are judged against the endpoints as they were, before vanished ones go:
            # a vanished endpoint's lease is released by its own teardown (or reported).
            dirs = {key: set() for key in lease_dirs(tx)}
            for sandbox in vanished_sandboxes(tx):
                release_sandbox(controller, tx, sandbox, None, env, report)
            release_homeless_endpoints(controller, tx, env, report)
            sweep_orphans(tx, env, report, pins=os.path.join(run_dir, "netns"))
            sweep_leases(tx, report, dirs)
    except StoreError as exc:
        report.add("store", state_dir, "", str(exc))
    return report


def _describe(err) -> str:
    if isinstance(err, CNIError):
        return f"{err.msg}: {err.details}" if err.details else err.msg
    return f"{type(err).__name__}: {err}"
