"""CNI command -> CNM operations. The one place that knows both sides.

ADD  = ensure Network -> ensure Sandbox -> create Endpoint -> Join -> result.
DEL  = Leave -> delete Endpoint -> drop the Sandbox when no member is left.
Shared netns (cnm-container): a joiner's ADD adds a member to the sandbox of the
container it names; a sandbox's endpoints stay (inactive) until its last member
leaves, then go through their own drivers with their own recorded ADD (lifecycle.py).
CHECK, GC, STATUS.

Locking: the store's write lock is held only for short transactions of the store's own
reads and writes; the slow work (IPAM, the kernel) runs under the lock of the command's
sandbox (cnm/locks.py), so commands on different sandboxes never wait for each other's.
An ADD records its intent (endpoint phase `adding`, with what teardown needs) before it
touches anything, and its outcome after; every failure, the final commit included, undoes
what the ADD did. A command killed in between leaves the intent, which the next ADD of the
attachment, its DEL, or a sweep finishes (lifecycle.py).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack

from . import drivers, lifecycle, reconcile
from .cni import log
from .cni.args import truthy
from .cni.attachments import valid_attachments
from .cni.errors import (CHECK_FAILED, CONFLICT, INVALID_CONFIG, INVALID_NETNS, LIMITED_CONNECTIVITY,
                         PLUGIN_FAILURE, TRY_AGAIN_LATER, CNIError)
from .cni.request import Request
from .cni.result import Result
from .cnm.locks import sandbox_key
from .cnm.model import ADDING, HOST_SANDBOX, READY, Endpoint, Network, Sandbox, endpoint_id
from .cnm.store import BOOT_KEY, UNKNOWN_BOOT, boot_id
from .drivers.base import RECORD_KEY, Context, Driver, record_add, recorded_result
from .drivers.dns import names
from .faults import crash_point
from .linux import fs, netns, nsusers
from .liveness import MNTNS_KEY, PIDNS_KEY
from .node import Node

FAULT_ENV = "CNM_FAULT"  # tests only: see cni_plugins/faults.py


def _fault(env, command: str, step: str) -> None:
    if FAULT_ENV in env:  # one dict lookup when unset
        crash_point(env, command, step)


class Controller:
    """Serves one plugin type through its driver (the Plugin protocol of cni.dispatch)."""

    def __init__(self, driver_name: str):
        self.driver: Driver = drivers.load(driver_name)

    # ---- helpers -------------------------------------------------------------------------
    def _guard_host_netns(self, request: Request, fd: int, allow_host: bool) -> None:
        """Refuse the plugin's own netns unless overridden (before anything changes)."""
        if allow_host or truthy(request.env.get("CNI_NETNS_OVERRIDE", "")):
            return
        if netns.identity_of(fd) == netns.own_identity():
            raise CNIError(
                INVALID_NETNS,
                "CNI_NETNS is the host network namespace",
                f"{request.netns!r} is the namespace this plugin runs in; set CNI_NETNS_OVERRIDE=1 if that is intended",
            )

    @staticmethod
    def _open_required(request: Request) -> int:
        if request.netns_fd is not None:
            if not netns.is_netns_fd(request.netns_fd):  # the helper's client checks only nsfs
                raise CNIError(INVALID_NETNS, "invalid CNI_NETNS: not a network namespace", request.netns)
            return os.dup(request.netns_fd)
        try:
            return netns.open_netns(request.netns)
        except netns.NetnsError as exc:
            raise CNIError(INVALID_NETNS, f"invalid CNI_NETNS: {exc.strerror}", request.netns) from None

    @staticmethod
    def _open_optional(*paths: str, fd: int | None = None) -> int | None:
        """The first openable netns among the candidates; None when all are gone (DEL)."""
        if fd is not None:
            try:
                if netns.is_netns_fd(fd):
                    return os.dup(fd)
            except OSError:
                pass
        for path in paths:
            if not path:
                continue
            try:
                return netns.open_netns(path)
            except netns.NetnsError:
                continue
        return None

    def _context(self, node: Node, request: Request, fd: int | None, peers: tuple = ()) -> Context:
        return Context(request, fd, request.env, peers, store_id=node.store_id, node_lock=node.node_lock,
                       live_endpoints=node.live_endpoints)

    @staticmethod
    def _ensure_network(tx, request: Request, driver: Driver, options: dict) -> Network:
        net = tx.get_network(request.network)
        if net is not None and (net.driver != driver.name or net.options != options):
            in_use = [e for e in tx.list_endpoints(network=net.name)]
            if in_use:
                changed = sorted(
                    k for k in set(net.options) | set(options) if net.options.get(k) != options.get(k)
                ) or ["driver"]
                raise CNIError(
                    INVALID_CONFIG,
                    f"network {net.name!r} already exists with other settings",
                    f"{', '.join(changed)} cannot change while {len(in_use)} endpoint(s) are attached",
                )
            net = None
        if net is None:
            net = Network(request.network, driver.name, options)
            tx.put_network(net)
        return net

    # ---- ADD -----------------------------------------------------------------------------
    def add(self, request: Request) -> Result:
        try:
            result = self._add(request)
        except CNIError as exc:
            # The ADD checked only some sandboxes (reconcile.VanishedCheck): if a check of
            # all of them releases one (its addresses, ports), the ADD is worth a second run.
            if not reconcile.release_all_vanished(request, exc):
                raise
            result = self._add(request)
        _fault(request.env, "add", "after-commit")
        return result

    def _add(self, request: Request) -> Result:
        driver = self.driver
        options = driver.network_options(request)
        options = {**options, **names.options(request)}  # {} unless the network has names
        target = driver.target_container(request) if driver.joins_sandbox else None
        node = Node.of_request(request)
        with ExitStack() as stack:
            fd = self._open_required(request)
            stack.callback(os.close, fd)
            if not driver.joins_sandbox:  # a joiner's guard needs the store: see _sandbox_to_join
                self._guard_host_netns(request, fd, driver.uses_host_netns)
            identity = netns.identity_of(fd)
            # After a reboot, or pods gone behind our back: their addresses return to the pool.
            reconcile.release_vanished_sandboxes(node, request, identity, target)
            stack.enter_context(node.sandbox_lock(sandbox_key("", identity.dev, identity.ino)))
            # The attachment's own lock too: a DEL of it that finds no record waits for it.
            stack.enter_context(node.sandbox_lock(attachment_key(request)))
            for _ in range(3):  # each round finishes one leftover of a dead command
                begun = self._begin_add(node, request, fd, identity, driver, options, target)
                if isinstance(begun, Result):
                    return begun
                if isinstance(begun, Endpoint):
                    self._finish_leftover(node, request, begun, identity)
                    continue
                if isinstance(begun, _Reused):  # our lock is its lock (the same netns identity)
                    lifecycle.teardown(node, request, begun.sandbox.id, lifecycle.everything)
                    continue
                return self._realise(node, request, fd, begun)
            raise CNIError(TRY_AGAIN_LATER, "attachment busy", f"{request.container_id}/{request.ifname} on "
                                                               f"{request.network} keeps changing; try again")

    def _begin_add(self, node: Node, request: Request, fd: int, identity, driver: Driver, options: dict,
                   target: str | None):
        """The ADD's first transaction: find or make the network and the sandbox, and record the
        endpoint's intent. Returns the plan to realise, a Result when there is nothing to do
        (a retry of an ADD that already succeeded, a kept endpoint taken back), or the leftover
        Endpoint of a dead command to finish first."""
        ep_id = endpoint_id(request.network, request.container_id, request.ifname)
        pinned = ""
        try:
            with node.transaction() as tx:
                if driver.joins_sandbox:
                    sandbox, new_sandbox = self._sandbox_to_join(tx, request, fd, identity, target), False
                network = self._ensure_network(tx, request, driver, options)
                existing = tx.get_endpoint(ep_id)
                if existing is not None:
                    if existing.phase != READY:
                        return existing
                    return self._readd(tx, request, existing, identity)
                if not driver.joins_sandbox:
                    sandbox, new_sandbox = self._ensure_sandbox(node, tx, request, fd, identity, driver)
                    if sandbox is None:
                        return _Reused(new_sandbox)
                endpoint = Endpoint(ep_id, request.network, sandbox.id, request.container_id, request.ifname,
                                    driver.name, phase=ADDING)
                peers = () if new_sandbox else tuple(tx.list_endpoints(sandbox=sandbox.id))
                ctx = self._context(node, request, fd, peers)
                driver.plan(ctx, network, endpoint)
                record_add(endpoint, request)
                tx.put_endpoint(endpoint)
                if new_sandbox:
                    tx.put_sandbox(sandbox)
                    if sandbox.pin:  # inside the transaction: a DEL judging pins holds the store's lock
                        netns.pin(fd, sandbox.pin)
                        pinned = sandbox.pin
                _fault(request.env, "add", "intent")
        except BaseException:
            if pinned:  # the sandbox's record was not committed
                netns.unpin(pinned)
            raise
        return _Plan(ctx, network, endpoint, sandbox, new_sandbox)

    def _readd(self, tx, request: Request, existing: Endpoint, identity) -> Result:
        """ADD of an attachment that exists. The same ADD again (a runtime retrying what it
        believes failed) gets the recorded result; a kept endpoint (its container left a shared
        sandbox that lives on) is taken back when the ADD asks for exactly what it has."""
        sandbox = tx.get_sandbox(existing.sandbox)
        same_netns = sandbox is not None and (sandbox.ns_dev, sandbox.ns_ino) == (identity.dev, identity.ino)
        result = recorded_result(existing)
        same = same_netns and result is not None and _same_attachment(existing, request)
        if same:
            result.emit(request.version)
            if not existing.active:
                existing.active = True
                tx.put_endpoint(existing)
            return result
        if not existing.active:
            holders = sorted({e.container_id for e in tx.list_endpoints(sandbox=existing.sandbox) if e.active})
            why = ("its configuration (ports, NAT, addresses) cannot change while they share it"
                   if same_netns else "ADD from that netns, with the same configuration, takes it back")
            raise CNIError(
                CONFLICT,
                "endpoint is kept for the other members of its sandbox",
                f"container {request.container_id}'s {request.ifname} on network {request.network} lives on "
                f"in sandbox {existing.sandbox} (members {', '.join(holders)}) until they leave; {why}",
            )
        raise CNIError(
            CONFLICT,
            "endpoint already exists",
            f"container {request.container_id} already has {request.ifname} on network "
            f"{request.network}; DEL it first",
        )

    def _finish_leftover(self, node: Node, request: Request, leftover: Endpoint, identity) -> None:
        """An ADD or DEL of this attachment died half-way (or its rollback could not reach the
        store): take down what it left, then the ADD starts over."""
        with node.transaction(write=False) as tx:
            sandbox = tx.get_sandbox(leftover.sandbox)
        choose = lifecycle.only({leftover.id})
        if lifecycle.lock_key(leftover, sandbox) == sandbox_key("", identity.dev, identity.ino):
            errors = lifecycle.teardown(node, request, leftover.sandbox, choose)  # our lock: held
        else:
            target = sandbox or Sandbox(leftover.sandbox, "", 0, 0)
            errors = lifecycle.release(node, request, target, choose)
            if errors is None:
                raise CNIError(TRY_AGAIN_LATER, "attachment busy",
                               f"another command is at work on {request.container_id}/{request.ifname} "
                               f"(sandbox {leftover.sandbox}); try again")
        if errors:
            err = next(iter(errors.values()))
            raise CNIError(err.code, f"cannot clear what an earlier command left: {err.msg}", err.details)

    def _realise(self, node: Node, request: Request, fd: int, plan: "_Plan") -> Result:
        """IPAM and the kernel, no store lock held; then the outcome. Any failure, the commit
        included, undoes everything this ADD did before it answers."""
        driver, ctx, network, endpoint, sandbox = self.driver, plan.ctx, plan.network, plan.endpoint, plan.sandbox
        undo = ExitStack()
        try:
            driver.create_endpoint(ctx, network, endpoint)
            undo.callback(driver.delete_endpoint, ctx, network, endpoint)
            result = driver.join(ctx, network, endpoint, sandbox)
            undo.callback(driver.leave, ctx, network, endpoint, sandbox)
            names.attach(driver, ctx, network, endpoint, result)
            # A result the requested version cannot carry (0.1/0.2 without an IP) must
            # fail the ADD here, rolled back, not after the commit.
            result.emit(request.version)
            record_add(endpoint, request, result)  # replayed to joiners, used by a foreign DEL
            endpoint.phase = READY
            _fault(request.env, "add", "before-commit")
            with node.transaction() as tx:
                names.refuse_shared_gateway(tx, network, endpoint)
                tx.put_endpoint(endpoint)
                _fault(request.env, "add", "commit")
        except BaseException:
            _unwind(undo)
            _forget_intent(node, endpoint, sandbox if plan.new_sandbox else None)
            raise
        names.committed(node, request, network, endpoint)  # answerable once the ADD answers
        return result

    def _ensure_sandbox(self, node: Node, tx, request: Request, fd: int, identity, driver: Driver):
        """The sandbox this netns is; a new one (to be pinned) on first use. (None, sandbox):
        the sandbox recorded for this netns identity is of a namespace that is gone (its inode
        number is this new namespace's now: their cookies differ), to be released first."""
        if driver.uses_host_netns and identity == netns.own_identity():
            sb = tx.get_sandbox(HOST_SANDBOX)
            if sb is None:
                return Sandbox(HOST_SANDBOX, request.netns, identity.dev, identity.ino), True
            return sb, False
        sb = tx.find_sandbox_by_netns(identity.dev, identity.ino)
        if sb is not None:
            recorded = sb.data.get(COOKIE_KEY)
            if recorded is not None and netns.cookie(fd) not in (recorded, None):
                return None, sb
            return sb, False
        mine = tx.find_sandbox_of_container(request.container_id)
        if mine is not None:
            raise CNIError(
                CONFLICT,
                "container is already attached in another network namespace",
                f"container {request.container_id} has sandbox {mine.id} in {mine.netns}; DEL it first",
            )
        sb_id = request.container_id
        # (a stale sandbox of a reused container id; and "host" names only the host's own)
        while sb_id == HOST_SANDBOX or tx.get_sandbox(sb_id) is not None:
            sb_id = sb_id + "-"

        fs.make_dirs(node.pin_dir, 0o700)
        data = {MNTNS_KEY: nsusers.mount_namespace(), PIDNS_KEY: nsusers.pid_namespace(),
                BOOT_KEY: boot_id() or UNKNOWN_BOOT, COOKIE_KEY: netns.cookie(fd)}
        return Sandbox(sb_id, request.netns, identity.dev, identity.ino, node.pin_path(sb_id), data), True

    def _sandbox_to_join(self, tx, request: Request, fd: int, identity, target: str) -> Sandbox:
        """The sandbox of container `target`, which CNI_NETNS must be (cnm-container ADD)."""
        sandbox = tx.find_sandbox_of_container(target)
        # The host guard, with its one exception: joining the host sandbox of cnm-host.
        self._guard_host_netns(request, fd, allow_host=sandbox is not None and sandbox.is_host)
        if sandbox is None:
            raise CNIError(
                INVALID_CONFIG,
                f"container {target!r} has no sandbox",
                f"no container {target!r} is attached to any network here (config key 'container' "
                f"or CNI_ARGS CNM_CONTAINER); ADD it with cnm-bridge, cnm-none or cnm-host first",
            )
        if (sandbox.ns_dev, sandbox.ns_ino) != (identity.dev, identity.ino):
            raise CNIError(
                CONFLICT,
                f"CNI_NETNS is not the network namespace of container {target!r}",
                f"CNI_NETNS={request.netns} is netns {identity}, but sandbox {sandbox.id} of container "
                f"{target} is {sandbox.netns} (pinned at {sandbox.pin or 'the host'}), netns "
                f"{sandbox.ns_dev}:{sandbox.ns_ino}",
            )
        mine = tx.find_sandbox_of_container(request.container_id)
        if mine is not None and mine.id != sandbox.id:
            raise CNIError(
                CONFLICT,
                "container is already attached in another network namespace",
                f"container {request.container_id} has sandbox {mine.id} in {mine.netns}; DEL it first",
            )
        return sandbox

    # ---- DEL -----------------------------------------------------------------------------
    def delete(self, request: Request) -> None:
        self._delete(request)
        _fault(request.env, "del", "after-commit")

    def _delete(self, request: Request) -> None:
        node = Node.of_request(request)
        ep_id = endpoint_id(request.network, request.container_id, request.ifname)
        for _ in range(3):
            endpoint, sandbox = self._recorded(node, ep_id)
            if endpoint is not None:
                break
            with node.sandbox_lock(attachment_key(request)):  # no ADD of it is under way meanwhile
                if self._recorded(node, ep_id)[0] is not None:
                    continue  # an ADD recorded it while we waited: the recorded path
                self._unpin_unrecorded(node, request)
                self._delete_unrecorded(node, request, ep_id)
                return
        with node.sandbox_lock(lifecycle.lock_key(endpoint, sandbox)):
            errors = lifecycle.teardown(node, request, endpoint.sandbox, lifecycle.for_del(ep_id),
                                        open_fd=lambda sb: self._open_for_del(sb, request))
        if errors:
            raise errors.get(ep_id) or next(iter(errors.values()))

    @staticmethod
    def _recorded(node: Node, ep_id: str) -> tuple[Endpoint | None, Sandbox | None]:
        with node.transaction(write=False) as tx:
            endpoint = tx.get_endpoint(ep_id)
            return endpoint, tx.get_sandbox(endpoint.sandbox) if endpoint is not None else None

    def _open_for_del(self, sandbox: Sandbox | None, request: Request) -> int | None:
        fd = self._open_sandbox(sandbox, request)
        if fd is not None and sandbox is not None and not sandbox.is_host:
            if netns.identity_of(fd) == netns.own_identity():
                try:
                    self._guard_host_netns(request, fd, allow_host=False)
                except CNIError:
                    os.close(fd)
                    raise
        return fd

    def _open_sandbox(self, sandbox: Sandbox | None, request: Request) -> int | None:
        if sandbox is None:
            return self._open_optional(request.netns, fd=request.netns_fd)
        return lifecycle.open_sandbox(sandbox, (request.netns,), request.netns_fd)

    @staticmethod
    def _unpin_unrecorded(node: Node, request: Request) -> None:
        """A pin named for this container with no sandbox record: an ADD died between pinning
        and its commit. (Under the store's write lock: an ADD pins inside its transaction.)"""
        pin = node.pin_path(request.container_id)
        if not os.path.exists(pin):
            return
        with node.transaction() as tx:
            if os.path.exists(pin) and tx.get_sandbox(request.container_id) is None:
                netns.unpin(pin)

    def _delete_unrecorded(self, node: Node, request: Request, ep_id: str) -> None:
        """No record (never added, already deleted, or lost): converge the kernel."""
        fd = self._open_optional(request.netns, fd=request.netns_fd)
        try:
            if fd is not None and not self.driver.uses_host_netns and netns.identity_of(fd) == netns.own_identity():
                os.close(fd)  # never touch the host's own interfaces
                fd = None
            self.driver.delete_unrecorded(self._context(node, request, fd), ep_id)
        finally:
            if fd is not None:
                os.close(fd)

    # ---- CHECK ---------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        node = Node.of_request(request)
        prev_raw = request.config.get("prevResult")
        prev = Result.parse(prev_raw, request.version) if prev_raw else None
        ep_id = endpoint_id(request.network, request.container_id, request.ifname)
        joins = self.driver.joins_sandbox
        target = self.driver.target_container(request) if joins else None
        with ExitStack() as stack:
            fd = self._open_required(request)
            stack.callback(os.close, fd)
            if not joins:
                self._guard_host_netns(request, fd, self.driver.uses_host_netns)
            tx = stack.enter_context(node.transaction(write=False))
            endpoint = tx.get_endpoint(ep_id)
            if endpoint is None or not endpoint.active or endpoint.phase != READY:
                raise CNIError(
                    CHECK_FAILED,
                    "no such endpoint",
                    f"container {request.container_id} has no {request.ifname} on network {request.network}",
                )
            sandbox = tx.get_sandbox(endpoint.sandbox)
            if joins:
                self._guard_host_netns(request, fd, allow_host=sandbox is not None and sandbox.is_host)
            identity = netns.identity_of(fd)
            if sandbox is None or (sandbox.ns_dev, sandbox.ns_ino) != (identity.dev, identity.ino):
                raise CNIError(
                    CHECK_FAILED,
                    "network namespace changed",
                    f"{request.netns} is not the namespace of sandbox {endpoint.sandbox}",
                )
            peers = tuple(e for e in tx.list_endpoints(sandbox=sandbox.id) if e.id != endpoint.id)
            if joins:
                self._check_membership(node, tx, request, endpoint, sandbox, target, peers, fd)
            network = tx.get_network(endpoint.network)
            drivers.load(endpoint.driver).check(self._context(node, request, fd, peers), network, endpoint,
                                                sandbox, prev)

    def _check_membership(self, node, tx, request, endpoint, sandbox, target, peers, fd) -> None:
        """cnm-container CHECK: still sharing the named container's stack, and that stack's
        endpoints pass their own drivers' CHECK (with their recorded config and result)."""
        theirs = tx.find_sandbox_of_container(target)
        if theirs is not None and theirs.id != sandbox.id:
            raise CNIError(
                CHECK_FAILED,
                f"container {target!r} is in another network namespace now",
                f"{request.container_id} shares sandbox {sandbox.id}; {target} is a member of {theirs.id}",
            )
        for ep in peers:
            peer_driver = drivers.load(ep.driver)
            if peer_driver.membership_only or ep.phase != READY:
                continue
            ctx = lifecycle.context_for(node, ep, request, sandbox, fd)
            recorded = recorded_result(ep)
            if recorded is not None:  # its interfaces, named by the path the replay uses (the pin)
                for iface in recorded.interfaces:
                    if iface.sandbox:
                        iface.sandbox = ctx.request.netns
            peer_driver.check(ctx, tx.get_network(ep.network), ep, sandbox, recorded)

    # ---- GC / STATUS ---------------------------------------------------------------------
    def gc(self, request: Request) -> None:
        valid = valid_attachments(request.config)
        if valid is None:  # no list given (cnitool gc): no information, remove nothing
            why = (f"GC of {request.network}: no cni.dev/valid-attachments (nor cni.dev/attachments) "
                   f"in the config, so nothing is removed")
            sys.stderr.write(f"cnm: {why}\n")
            log.message(request.env, request.config, "info", why, command="GC")  # the operator's log too
            return
        node = Node.of_request(request)
        report = reconcile.collect_garbage(node, request, valid)
        errors = [CNIError(PLUGIN_FAILURE, f"GC could not remove {a.kind} {a.name}", a.error) for a in report.errors]
        with node.transaction(write=False) as tx:  # what stays (kept for a sandbox's members, busy)
            remaining = tx.list_endpoints(network=request.network)
        try:
            self.driver.gc(request, valid, remaining)
        except CNIError as err:
            errors.append(err)
        if errors:
            raise CNIError(errors[0].code, errors[0].msg, "; ".join(f"{e.msg}: {e.details}" for e in errors))

    def status(self, request: Request) -> None:
        """50: an ADD cannot succeed now (store not writable, driver or IPAM says so);
        51: existing endpoints of this network may have lost connectivity."""
        self.driver.network_options(request)
        node = Node.of_request(request)
        with node.transaction() as tx:  # an ADD needs to write
            endpoints = [e for e in tx.list_endpoints(network=request.network) if e.phase == READY]
        self.driver.status(request)
        problem = self.driver.degraded(request, endpoints) if endpoints else None
        if problem:
            raise CNIError(LIMITED_CONNECTIVITY, "existing endpoints may have limited connectivity", problem)


COOKIE_KEY = "cookie"  # sandbox.data: its netns's cookie (linux.netns.cookie), never reused


class _Reused:
    """A recorded sandbox whose netns is gone, its inode number given to the ADD's new netns."""

    __slots__ = ("sandbox",)

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox


class _Plan:
    """An ADD between its intent and its outcome."""

    __slots__ = ("ctx", "network", "endpoint", "sandbox", "new_sandbox")

    def __init__(self, ctx: Context, network: Network, endpoint: Endpoint, sandbox: Sandbox, new_sandbox: bool):
        self.ctx, self.network, self.endpoint, self.sandbox, self.new_sandbox = ctx, network, endpoint, sandbox, new_sandbox


def attachment_key(request: Request) -> str:
    """The lock of one attachment (network, container, ifname): held by its ADD throughout,
    and by a DEL that finds no record of it (which must not undo an ADD under way)."""
    return "ep:" + endpoint_id(request.network, request.container_id, request.ifname)


def _forget_intent(node: Node, endpoint: Endpoint, new_sandbox: Sandbox | None) -> None:
    """After a failed ADD was undone: its intent (and the sandbox it made) go. When the store
    cannot take even that (disk full), the intent stays: the kernel is clean, and the next
    ADD, DEL or sweep of the attachment finds nothing left to undo."""
    try:
        with node.transaction() as tx:
            tx.delete_endpoint(endpoint.id)
            if new_sandbox is not None and not tx.list_endpoints(sandbox=new_sandbox.id):
                tx.delete_sandbox(new_sandbox.id)
                if new_sandbox.pin:
                    netns.unpin(new_sandbox.pin)
    except Exception:
        if new_sandbox is not None and new_sandbox.pin:
            try:  # a pin must not hold the netns of a failed ADD; its record, if any, goes with a DEL
                netns.unpin(new_sandbox.pin)
            except OSError:
                pass


def _same_attachment(endpoint: Endpoint, request: Request) -> bool:
    """The recorded ADD asked for exactly what `request` asks for (the config but its
    prevResult, and CNI_ARGS)."""
    recorded = endpoint.data.get(RECORD_KEY) or {}
    try:
        before = json.loads(recorded.get("stdin") or "null")
    except ValueError:
        return False
    if not isinstance(before, dict):
        return False
    now = dict(request.config)
    for conf in (before, now):
        conf.pop("prevResult", None)
    return before == now and recorded.get("args", "") == request.env.get("CNI_ARGS", "")


def _unwind(stack: ExitStack) -> None:
    """Roll back a failed ADD; errors while undoing must not hide the original error."""
    try:
        stack.close()
    except Exception:
        pass
