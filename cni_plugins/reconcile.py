"""Make the kernel agree with a store after crashes, missed DELs and reboots: plan, then apply.

`plan()` looks (read-only: `cnmctl doctor` shows it as it is) and returns actions;
`apply()` performs them, each again under the lock that makes it safe. What a plan holds:

  release   a sandbox whose netns is DEAD or ABANDONED (liveness.py): its endpoints are
            torn down through their own drivers, then the sandbox and its pin go
  finish    endpoints a dead command left `adding` or `deleting` (nobody holds the
            sandbox's lock): taken down
  homeless  an endpoint whose sandbox record is missing: taken down
  empty     a sandbox with no endpoint: its pin and record go
  pin       a file in this store's own pin directory that no sandbox records: unmounted
  <driver>  a driver's orphans (Driver.orphans): for the bridge, host veths and nft
            elements tagged with this store's id that no endpoint owns
  <loss>    what live endpoints need and the kernel lost (Driver.losses): for the bridge,
            our nftables layout and elements after a flush or a deleted table or chain;
            put back from the records (Driver.restore), never removed
  unknown   (report only) a sandbox whose liveness cannot be judged from here
  foreign   (report only) what cannot be proven this store's: a `cnm…` veth or nft element
            of an older version or another store, a lease this store did not write
  busy      (report only) a command holds the sandbox's lock: in use, so not stale

Everything a sweep removes is provably this store's and provably dead:
another store's objects carry another tag, and leases are never swept here: a lease goes
only with the endpoint (or the intent) that recorded its IPAM call, or through the IPAM's
own GC when the runtime's valid-attachments list says its attachment is gone.

ADD's vanished check is bounded (VanishedCheck): GC and `cnmctl gc` judge every sandbox,
an ADD only what can have vanished unseen, so its cost does not grow with the pods.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field

from . import drivers, lifecycle
from .cni.errors import (CONFLICT, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_ENV, INVALID_NETNS,
                         IPAM_FAILURE, UNSUPPORTED_FIELD, CNIError)
from .cni.request import Request
from .cnm import pins
from .cnm.locks import sandbox_key
from .cnm.model import HOST_SANDBOX, READY, Sandbox
from .cnm.store import StoreError
from .drivers.base import Loss, Orphan
from .linux import netns
from .liveness import ABANDONED, DEAD, UNKNOWN, Judge, is_namespace
from .node import Node


@dataclass
class Action:
    kind: str  # release, finish, homeless, empty, pin, <a driver's orphan kind>, unknown, foreign, busy
    name: str
    detail: str = ""
    error: str = ""
    targets: list = field(default_factory=list)  # what apply() acts on (endpoint ids, nft elements)

    @property
    def report_only(self) -> bool:
        return self.kind in ("unknown", "foreign", "busy")

    @property
    def restores(self) -> bool:
        """A loss (put back), not something stale (removed)."""
        return bool(self.targets) and isinstance(self.targets[-1], Loss)


@dataclass
class Report:
    actions: list[Action] = field(default_factory=list)

    def add(self, kind: str, name: str, detail: str = "", error: str = "") -> None:
        self.actions.append(Action(kind, name, detail, error))

    @property
    def errors(self) -> list[Action]:
        return [a for a in self.actions if a.error]

    def as_json(self) -> dict:
        def view(a: Action) -> dict:
            return {k: v for k, v in asdict(a).items() if k != "targets"}

        done = [a for a in self.actions if not a.error and not a.report_only]
        return {"removed": [view(a) for a in done if not a.restores],
                "restored": [view(a) for a in done if a.restores],
                "kept": [view(a) for a in self.actions if a.report_only],
                "errors": [view(a) for a in self.errors]}


# ---- plan ----------------------------------------------------------------------------------
def plan(node: Node, kernel: bool = True) -> list[Action]:
    """What a node-wide reconcile of `node`'s store would do (read-only). `kernel`: also
    look for orphan veths and nft elements in this network namespace."""
    try:
        with node.store.read_only() as tx:
            if tx is None:
                return []
            store_id = node.store.id(create=False)
            sandboxes = tx.list_sandboxes()
            endpoints = tx.list_endpoints()
    except StoreError as exc:
        return [Action("unknown", node.store.path, "", str(exc))]
    actions: list[Action] = []
    judge = Judge()
    by_sandbox: dict[str, list] = {}
    for ep in endpoints:
        by_sandbox.setdefault(ep.sandbox, []).append(ep)
    for sb in sandboxes:
        eps = by_sandbox.get(sb.id, [])
        if not eps:
            actions.append(Action("empty", sb.id, "a sandbox without endpoints"))
            continue
        verdict = judge.judge(sb, abandonment=True)
        who = ", ".join(f"{e.container_id}/{e.ifname} on {e.network}" for e in eps)
        if verdict.releasable:
            actions.append(Action("release", sb.id, f"{verdict.why}; its endpoints go: {who}"))
            continue
        if verdict.state == UNKNOWN:
            actions.append(Action("unknown", sb.id, f"not judged: {verdict.why}"))
        left = [e for e in eps if e.phase != READY]
        if left:
            names = ", ".join(f"{e.container_id}/{e.ifname} ({e.phase}"
                              f"{': ' + e.data['del_error'] if e.data.get('del_error') else ''})" for e in left)
            actions.append(Action("finish", sb.id, f"left unfinished by a command that is gone: {names}",
                                  targets=[e.id for e in left]))
    known = {sb.id for sb in sandboxes}
    for ep in endpoints:
        if ep.sandbox not in known:
            actions.append(Action("homeless", ep.id, f"{ep.container_id}/{ep.ifname} on {ep.network}: "
                                                     f"sandbox {ep.sandbox} has no record", targets=[ep.id]))
    if not store_id:  # no store identity yet: nothing can carry it
        return actions
    actions += _orphan_pins(pins.pin_dir(node.env, store_id), {sb.pin for sb in sandboxes if sb.pin})
    if kernel:
        for name in sorted(drivers.DRIVERS):
            try:
                found = drivers.load(name).orphans(lifecycle.sweep_context(node), endpoints)
            except Exception as exc:  # noqa: BLE001 -- a listing failure is reported, not fatal
                actions.append(Action(name, "*", "looking for orphans", lifecycle.describe(exc)))
                continue
            actions += [Action(o.kind if o.removable else "foreign", o.name, o.detail,
                               targets=[name, o]) for o in found]
            try:
                lost = drivers.load(name).losses(store_id, [e for e in endpoints if e.phase == READY])
            except Exception as exc:  # noqa: BLE001
                actions.append(Action(name, "*", "looking for what live endpoints lost", lifecycle.describe(exc)))
                continue
            actions += [Action(loss.kind, loss.name, loss.detail, targets=[name, loss]) for loss in lost]
    return actions


def _orphan_pins(directory: str, recorded: set[str]) -> list[Action]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [Action("pin", os.path.join(directory, n), "a pin no sandbox records")
            for n in names if pins.is_pin_name(n) and os.path.join(directory, n) not in recorded]


# ---- apply ---------------------------------------------------------------------------------
def apply(node: Node, actions: list[Action], request: Request | None = None) -> Report:
    """Perform `actions` (from plan()); each is judged again under the lock that makes it safe."""
    report = Report()
    request = request or lifecycle.sweep_request(node.env)
    restored: set[str] = set()  # drivers whose losses were put back (all at once)
    for action in actions:
        if action.error:  # a step of the plan that failed (a driver's sweep): reported as such
            report.actions.append(action)
            continue
        try:
            if action.restores:
                _restore_once(node, action, restored, report)
            else:
                _apply_one(node, action, request, report)
        except Exception as exc:  # noqa: BLE001 -- one failure must not stop the sweep
            report.add(action.kind, action.name, action.detail, lifecycle.describe(exc))
    return report


def _restore_once(node: Node, action: Action, restored: set[str], report: Report) -> None:
    """The first loss of a driver puts back all of that driver's (one transaction, from the
    records read under the store's write lock: no ADD or DEL records meanwhile); the report
    lists what was really put back (something else, e.g. the helper, may have been first)."""
    driver_name = action.targets[0]
    if driver_name in restored:
        return
    restored.add(driver_name)
    for loss in _restore_driver(node, driver_name):
        report.actions.append(Action(loss.kind, loss.name, loss.detail, targets=[driver_name, loss]))


def _restore_driver(node: Node, driver_name: str) -> list[Loss]:
    with node.transaction() as tx:
        endpoints = [e for e in tx.list_endpoints() if e.phase == READY]
        return drivers.load(driver_name).restore(node.store_id, endpoints, node.node_lock)


def restore_lost(node: Node) -> list[Loss] | None:
    """What the live endpoints of `node`'s store lost in this network namespace's kernel,
    put back from their records; nothing is removed (the resident helper's firewall watch,
    cli/nftwatch.py). None when the store does not exist (any more)."""
    with node.store.read_only() as tx:
        if tx is None:
            return None
    out: list[Loss] = []
    for name in sorted(drivers.DRIVERS):
        out += _restore_driver(node, name)
    return out


def _apply_one(node: Node, action: Action, request: Request, report: Report) -> None:
    kind = action.kind
    if action.report_only:
        report.actions.append(action)
        return
    if kind in ("release", "finish", "empty"):
        with node.transaction(write=False) as tx:
            sandbox = tx.get_sandbox(action.name)
        if sandbox is None:
            return
        still = None
        if kind == "release":
            choose, why, still = lifecycle.everything, action.detail, _still_releasable
        else:
            choose, why = lifecycle.unfinished, action.detail
        errors = lifecycle.release(node, request, sandbox, choose, still=still)
        if errors is None:
            report.actions.append(Action("busy", action.name, f"a command is at work on it now ({kind} not done)"))
        else:
            _report_teardown(report, kind, action.name, why, errors)
    elif kind == "homeless":
        key = sandbox_key(action.name, 0, 0)
        with node.sandbox_lock(key):
            errors = lifecycle.teardown(node, request, "", lifecycle.only(set(action.targets)))
        _report_teardown(report, kind, action.name, action.detail, errors)
    elif kind == "pin":
        with node.transaction() as tx:  # an ADD pins inside its transaction
            if action.name in {sb.pin for sb in tx.list_sandboxes()}:
                return
            netns.unpin(action.name)
        report.add(kind, action.name, action.detail)
    elif action.targets and isinstance(action.targets[-1], Orphan):  # a driver's
        driver_name, orphan = action.targets
        with node.transaction() as tx:  # no ADD can record an endpoint meanwhile
            if orphan.owner and tx.get_endpoint(orphan.owner) is not None:
                return
            drivers.load(driver_name).remove_orphan(lifecycle.sweep_context(node, request), orphan)
        report.add(kind, action.name, action.detail)


def _report_teardown(report: Report, kind: str, name: str, why: str, errors: dict) -> None:
    if errors:
        for ep_id, err in errors.items():
            report.add(kind, f"{name}/{ep_id}", why, lifecycle.describe(err))
    else:
        report.add(kind, name, why)


def reconcile_node(node: Node) -> Report:
    """`cnmctl gc` without a network: plan, then apply."""
    return apply(node, plan(node))


# ---- CNI GC --------------------------------------------------------------------------------
def collect_garbage(node: Node, request: Request, valid: set[tuple[str, str]]) -> Report:
    """CNI GC of `request.network`: attachments the runtime did not list go (the runtime's
    word), and what is provably stale anywhere in the store (plan())."""
    # (a sweep that could not look is `cnmctl gc`'s and doctor's to report, not the GC's error)
    report = apply(node, [a for a in plan(node) if not a.report_only and not a.error], request)
    with node.transaction(write=False) as tx:
        stale = [e for e in tx.list_endpoints(network=request.network) if (e.container_id, e.ifname) not in valid]
        sandboxes = {sb.id: sb for sb in tx.sandboxes_by_id({e.sandbox for e in stale})}
    for ep in stale:
        sandbox = sandboxes.get(ep.sandbox) or Sandbox(ep.sandbox, "", 0, 0)
        errors = lifecycle.release(node, request, sandbox, lifecycle.for_del(ep.id))
        if errors is None:
            continue  # a command is at work on it right now
        _report_teardown(report, "endpoint", ep.id, f"{ep.container_id}/{ep.ifname}: not in valid-attachments",
                         errors)
    return report


# ---- ADD's vanished check ------------------------------------------------------------------
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
        back (by an admin) is noticed within (sandboxes / ROUND) ADDs.
    A full check again when this process has none for the store yet, when the store file
    or the pin directory is another one (recreated: reboot, wiped /run), or the boot id
    changed; and when an ADD fails, if a full check then releases anything, the ADD runs
    once more (Controller.add). GC and `cnmctl gc` always check everything."""

    ROUND = 8
    MAX_STORES = 64  # a helper serving many state directories (tests) keeps the latest ones

    def __init__(self, ident: tuple):
        self.ident = ident
        self.watch: set[str] = set()
        self.cursor = ""
        self.lock = threading.Lock()  # the helper's ADDs run side by side

    _known: dict[str, "VanishedCheck"] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, key: str, ident: tuple) -> "VanishedCheck | None":
        with cls._lock:
            known = cls._known.get(key)
            return known if known is not None and known.ident == ident else None

    @classmethod
    def remember(cls, key: str, state: "VanishedCheck") -> None:
        with cls._lock:
            cls._known.pop(key, None)
            cls._known[key] = state
            while len(cls._known) > cls.MAX_STORES:
                cls._known.pop(next(iter(cls._known)))

    @classmethod
    def forget(cls, key: str) -> None:
        with cls._lock:
            cls._known.pop(key, None)


def _identity(node: Node, boot: str | None) -> tuple | None:
    """What must stay the same for a remembered check to apply; None: cannot tell."""
    try:
        db, run = os.stat(node.store.path), os.stat(node.pin_dir)
    except OSError:
        return None  # no pin directory yet (or no store file): the full check is cheap then
    return (db.st_dev, db.st_ino, run.st_dev, run.st_ino, boot)


def release_vanished_sandboxes(node: Node, request: Request, identity, target: str | None) -> Report:
    """ADD's first step: after a reboot (or pins removed) the dead sandboxes' addresses return
    to the pool; bounded, see VanishedCheck. Never fails the ADD; what cannot be released
    waits for GC (or the next full check)."""
    report = Report()
    key = node.store.path
    try:
        with node.transaction(write=False) as tx:
            boot = tx.meta("boot_id")
            ident = _identity(node, boot)
            state = VanishedCheck.of(key, ident) if ident is not None else None
            judge = Judge()
            if state is None:
                state = VanishedCheck(ident)
                with state.lock:
                    candidates = tx.list_sandboxes()
            else:
                with state.lock:
                    candidates, state.cursor = tx.sandboxes_to_check(
                        (identity.dev, identity.ino), (request.container_id, target), state.cursor,
                        VanishedCheck.ROUND)
                    candidates += tx.sandboxes_by_id(state.watch - {sb.id for sb in candidates})
                    state.watch &= tx.sandbox_ids()  # gone from the store: forget
        doomed = []
        with state.lock:
            for sb in candidates:
                if sb.id == HOST_SANDBOX:
                    continue
                verdict = judge.judge(sb)
                if verdict.state in (DEAD, UNKNOWN) or not _pin_holds(sb):
                    state.watch.add(sb.id)  # alive through the runtime's path only, or dead: look again
                else:
                    state.watch.discard(sb.id)
                if verdict.state == DEAD:
                    doomed.append(sb)
        if ident is not None:
            VanishedCheck.remember(key, state)
        else:
            VanishedCheck.forget(key)  # a new pin directory may get the old one's inode number
        for sb in doomed:
            errors = lifecycle.release(node, request, sb, still=_still_dead)
            if errors is not None:
                _report_teardown(report, "release", sb.id, "netns gone", errors)
    except Exception:  # noqa: BLE001 -- never fails the ADD
        VanishedCheck.forget(key)  # the next ADD checks everything
    return report


def _still_dead(sb: Sandbox) -> bool:
    return Judge().judge(sb).state == DEAD


def _still_releasable(sb: Sandbox) -> bool:
    """Judged again with a fresh look at /proc: a thread handing a netns on to the next one
    can be missed by one look."""
    return Judge().judge(sb, abandonment=True).releasable


def _pin_holds(sb: Sandbox) -> bool:
    return is_namespace(sb.pin, sb.ns_dev, sb.ns_ino)


# Failures no store state can cause: no second run for those.
_NOT_STATE = (INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, INVALID_ENV, DECODE_FAILURE, INVALID_NETNS)
# Failures a sandbox every runtime let go of can cause (its address or host port is taken).
_HELD_RESOURCES = (IPAM_FAILURE, CONFLICT)


def release_all_vanished(request: Request, error: CNIError) -> bool:
    """After a failed ADD: judge every sandbox of the store (abandoned ones too when the
    failure is a resource some sandbox may hold); True when one was released, so the ADD is
    worth running again (Controller.add)."""
    if error.code in _NOT_STATE:
        return False
    try:
        node = Node.of_request(request)
        with node.transaction(write=False) as tx:
            sandboxes = tx.list_sandboxes()
        judge, released = Judge(), False
        deep = error.code in _HELD_RESOURCES
        for sb in sandboxes:
            verdict = judge.judge(sb, abandonment=deep)
            if verdict.state not in (DEAD, ABANDONED):
                continue
            errors = lifecycle.release(node, request, sb, still=_still_releasable if deep else _still_dead)
            released = released or errors == {}
        return released
    except Exception:  # noqa: BLE001
        return False
