"""CNI command -> CNM operations. The one place that knows both sides.

ADD  = ensure Network -> ensure Sandbox -> create Endpoint -> Join -> result.
DEL  = Leave -> delete Endpoint -> drop the Sandbox when no member is left.
Shared netns (cnm-container): a joiner's ADD adds a member to the sandbox of the
container it names; a sandbox's endpoints stay (inactive) until its last member
leaves, then go through their own drivers with their own recorded ADD (_leave).
CHECK, GC, STATUS as in DESIGN.md §2. Each command is one store transaction,
which is also the node-wide lock that orders concurrent commands.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from . import drivers
from .cni import log
from .cni.args import truthy
from .cni.errors import (CHECK_FAILED, CONFLICT, INVALID_CONFIG, INVALID_NETNS, LIMITED_CONNECTIVITY,
                         NOT_AVAILABLE, PLUGIN_FAILURE, CNIError)
from .cni.paths import state_path_problem
from .cni.request import Request, parse
from .cni.result import Result
from .cnm.model import HOST_SANDBOX, Endpoint, Network, Sandbox, endpoint_id
from .cnm.store import Store, StoreError, state_dir
from .drivers.base import RECORD_KEY, Context, Driver, record_add, recorded_result
from .linux import netns

RUN_DIR_ENV = "CNM_RUN_DIR"
DEFAULT_RUN_DIR = "/run/cnm"
FAULT_ENV = "CNM_FAULT"  # tests only: see cni_plugins/faults.py


def _fault(env, command: str, step: str) -> None:
    if FAULT_ENV in env:  # one dict lookup when unset
        from .faults import crash_point

        crash_point(env, command, step)

# CNI plugin type -> CNM driver name.
PLUGIN_DRIVERS = {
    "cnm-bridge": "bridge",
    "cnm-host": "host",
    "cnm-none": "null",
    "loopback": "null",  # cnm-none installed in containerd's loopback slot
    "cnm-container": "container",
}


def pin_dir(env) -> str:
    return os.path.join(env.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR, "netns")


def open_store(request: Request) -> Store:
    directory = request.config.get("stateDir")
    problem = None if directory is None else state_path_problem(directory)
    if problem:
        raise CNIError(INVALID_CONFIG, "invalid stateDir", f"stateDir={problem}")
    return Store(state_dir(directory, request.env))


class Controller:
    """Serves one plugin type through its driver (the Plugin protocol of cni.dispatch)."""

    def __init__(self, driver_name: str):
        self.driver: Driver = drivers.load(driver_name)

    # ---- helpers -------------------------------------------------------------------------
    def _guard_host_netns(self, request: Request, fd: int, allow_host: bool) -> None:
        """R10: refuse the plugin's own netns unless overridden (before anything changes)."""
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

    def _network_options(self, request: Request) -> dict:
        return self.driver.network_options(request)

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
            from . import reconcile

            # The ADD checked only some sandboxes (reconcile.VanishedCheck): if a check of
            # all of them releases one (its addresses, ports), the ADD is worth a second run.
            if not reconcile.release_all_vanished(self, request, exc):
                raise
            result = self._add(request)
        _fault(request.env, "add", "after-commit")
        return result

    def _add(self, request: Request) -> Result:
        driver = self.driver
        options = self._network_options(request)
        joins = getattr(driver, "joins_sandbox", False)
        target = driver.target_container(request) if joins else None
        store = open_store(request)
        with ExitStack() as stack:
            fd = self._open_required(request)
            stack.callback(os.close, fd)
            if not joins:  # a joiner's guard needs the store: see _sandbox_to_join
                self._guard_host_netns(request, fd, driver.uses_host_netns)
            identity = netns.identity_of(fd)
            try:
                tx = stack.enter_context(store.transaction())
            except StoreError as exc:
                raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
            from . import reconcile

            reconcile.release_vanished_sandboxes(self, tx, request, identity)  # after a reboot: reuse their addresses
            if joins:
                sandbox, new_sandbox = self._sandbox_to_join(tx, request, fd, identity, target), False
            network = self._ensure_network(tx, request, driver, options)
            ep_id = endpoint_id(request.network, request.container_id, request.ifname)
            existing = tx.get_endpoint(ep_id)
            if existing is not None and not existing.active:
                revived = self._reactivate(tx, request, existing, identity)
                if revived is not None:
                    return revived
            if existing is not None and not existing.active:
                holders = sorted(self._active_members(tx, existing.sandbox))
                raise CNIError(
                    CONFLICT,
                    "endpoint is kept for the other members of its sandbox",
                    f"container {request.container_id}'s {request.ifname} on network {request.network} lives on "
                    f"in sandbox {existing.sandbox} (members {', '.join(holders)}) until they leave; ADD from "
                    f"that netns takes it back",
                )
            if existing is not None:
                raise CNIError(
                    CONFLICT,
                    "endpoint already exists",
                    f"container {request.container_id} already has {request.ifname} on network "
                    f"{request.network}; DEL it first",
                )
            if not joins:
                sandbox, new_sandbox = self._ensure_sandbox(tx, request, fd, identity, driver)
            endpoint = Endpoint(
                ep_id, request.network, sandbox.id, request.container_id, request.ifname, driver.name
            )
            peers = () if new_sandbox else tuple(tx.list_endpoints(sandbox=sandbox.id))
            ctx = Context(request, fd, request.env, peers)
            undo = ExitStack()
            try:
                if new_sandbox and sandbox.pin:
                    netns.pin(fd, sandbox.pin)
                    undo.callback(netns.unpin, sandbox.pin)
                driver.create_endpoint(ctx, network, endpoint)
                undo.callback(driver.delete_endpoint, ctx, network, endpoint)
                result = driver.join(ctx, network, endpoint, sandbox)
                undo.callback(driver.leave, ctx, network, endpoint, sandbox)
                # A result the requested version cannot carry (0.1/0.2 without an IP) must
                # fail the ADD here, rolled back, not after the commit.
                result.emit(request.version)
                record_add(endpoint, request, result)  # replayed to joiners, used by a foreign DEL
                tx.put_sandbox(sandbox)  # (the network: written by _ensure_network when new; no driver changes it)
                tx.put_endpoint(endpoint)
            except BaseException:
                _unwind(undo)
                raise
            undo.pop_all()
            _fault(request.env, "add", "before-commit")
            return result

    @staticmethod
    def _reactivate(tx, request: Request, endpoint: Endpoint, identity) -> Result | None:
        """ADD of an endpoint kept (inactive) for the other members of its sandbox, from the
        same netns: the container is back in the stack that never went away."""
        sandbox = tx.get_sandbox(endpoint.sandbox)
        result = recorded_result(endpoint)
        if sandbox is None or result is None or (sandbox.ns_dev, sandbox.ns_ino) != (identity.dev, identity.ino):
            return None
        result.emit(request.version)
        endpoint.active = True
        tx.put_endpoint(endpoint)
        return result

    def _ensure_sandbox(self, tx, request: Request, fd: int, identity, driver: Driver) -> tuple[Sandbox, bool]:
        """The sandbox this netns is; a new one (pinned) on first use."""
        if driver.uses_host_netns and identity == netns.own_identity():
            sb = tx.get_sandbox(HOST_SANDBOX)
            if sb is None:
                return Sandbox(HOST_SANDBOX, request.netns, identity.dev, identity.ino), True
            return sb, False
        sb = tx.find_sandbox_by_netns(identity.dev, identity.ino)
        if sb is not None:
            return sb, False
        mine = tx.find_sandbox_of_container(request.container_id)
        if mine is not None:
            raise CNIError(
                CONFLICT,
                "container is already attached in another network namespace",
                f"container {request.container_id} has sandbox {mine.id} in {mine.netns}; DEL it first",
            )
        sb_id = request.container_id
        while tx.get_sandbox(sb_id) is not None:  # a stale sandbox of a reused container id
            sb_id = sb_id + "-"
        pin = os.path.join(pin_dir(request.env), sb_id)
        return Sandbox(sb_id, request.netns, identity.dev, identity.ino, pin), True

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
        store = open_store(request)
        ep_id = endpoint_id(request.network, request.container_id, request.ifname)
        with ExitStack() as stack:
            try:
                tx = stack.enter_context(store.transaction())
            except StoreError as exc:
                raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
            endpoint = tx.get_endpoint(ep_id)
            if endpoint is None:
                self._unpin_unrecorded(tx, request)
                self._delete_unrecorded(request, ep_id)
                return
            sandbox = tx.get_sandbox(endpoint.sandbox)
            fd = self._open_sandbox(sandbox, request)
            if fd is not None:
                stack.callback(os.close, fd)
            if fd is not None and sandbox is not None and not sandbox.is_host:
                if netns.identity_of(fd) == netns.own_identity():
                    self._guard_host_netns(request, fd, allow_host=False)
            errors = self._leave(tx, request, endpoint, sandbox, fd)
            if errors:
                raise errors[0]
            _fault(request.env, "del", "before-commit")

    def _leave(self, tx, request: Request, endpoint: Endpoint, sandbox: Sandbox | None, fd: int | None) -> list:
        """The endpoint's container leaves; the sandbox's endpoints go with its last member.

        While OTHER containers are still members of the sandbox, the endpoint stays,
        inactive, with all it owns (its addresses and links are the shared stack). When
        the last member leaves, every inactive endpoint is torn down through its own
        recorded driver and config, and the sandbox and its pin go. Returns the errors.
        """
        endpoint.active = False
        tx.put_endpoint(endpoint)
        members = self._active_members(tx, endpoint.sandbox)
        others = members - {endpoint.container_id}
        if others:
            if getattr(drivers.load(endpoint.driver), "membership_only", False):
                return self._teardown_all(tx, request, [endpoint], sandbox, fd)  # owns nothing
            return []  # the sandbox lives on; its endpoints stay until the last member leaves
        if endpoint.container_id in members:  # the same container keeps other endpoints here
            doomed = [endpoint]
        else:
            doomed = [e for e in tx.list_endpoints(sandbox=endpoint.sandbox) if not e.active]
        errors = self._teardown_all(tx, request, doomed, sandbox, fd)
        if not members and sandbox is not None and not errors:
            if sandbox.pin:
                netns.unpin(sandbox.pin)
            tx.delete_sandbox(sandbox.id)
        return errors

    def _teardown_all(self, tx, request, doomed, sandbox, fd) -> list:
        # The sandbox's endpoints: a driver may hand something over to one that stays (a
        # host port the same container publishes on two networks).
        peers = tuple(tx.list_endpoints(sandbox=sandbox.id)) if sandbox is not None else ()
        errors = []
        for ep in doomed:
            try:
                self._teardown(tx, self._context_for(ep, request, sandbox, fd, peers), ep, sandbox)
            except CNIError as err:
                errors.append(err)
        return errors

    @staticmethod
    def _active_members(tx, sandbox_id: str) -> set[str]:
        return {e.container_id for e in tx.list_endpoints(sandbox=sandbox_id) if e.active}

    @staticmethod
    def _teardown(tx, ctx: Context, endpoint: Endpoint, sandbox: Sandbox | None) -> None:
        """Leave + delete through the endpoint's own driver (whatever plugin serves this DEL)."""
        driver = drivers.load(endpoint.driver)
        network = tx.get_network(endpoint.network)
        if getattr(driver, "leave_overlaps_delete", False):
            _overlapped(lambda: driver.leave(ctx, network, endpoint, sandbox),
                        lambda: driver.delete_endpoint(ctx, network, endpoint))
        else:
            driver.leave(ctx, network, endpoint, sandbox)
            driver.delete_endpoint(ctx, network, endpoint)
        tx.delete_endpoint(endpoint.id)

    @staticmethod
    def _context_for(endpoint: Endpoint, request: Request, sandbox: Sandbox | None, fd: int | None,
                     peers: tuple = ()) -> Context:
        """The Context to act on `endpoint` with while serving `request`.

        The request's own endpoint gets the request. Any other endpoint (torn down or
        checked by the last member's DEL/CHECK, or by GC) gets its ADD replayed: the
        recorded config and CNI_ARGS, CNI_CONTAINERID/CNI_IFNAME of its own attachment
        (a delegated IPAM releases by those) and the sandbox's pin as CNI_NETNS.
        """
        own = endpoint_id(request.network, request.container_id, request.ifname)
        if request.command in ("ADD", "DEL", "CHECK") and endpoint.id == own:
            return Context(request, fd, request.env, peers)
        path = (sandbox.pin or sandbox.netns) if sandbox is not None else request.netns
        env = dict(request.env)
        env.update(CNI_COMMAND=request.command if request.command in ("DEL", "CHECK") else "DEL",
                   CNI_CONTAINERID=endpoint.container_id, CNI_IFNAME=endpoint.ifname, CNI_NETNS=path or "")
        recorded = endpoint.data.get(RECORD_KEY) or {}
        replayed = None
        if recorded.get("stdin"):
            env["CNI_ARGS"] = recorded.get("args", "")
            try:
                replayed = parse(env, recorded["stdin"].encode())
            except CNIError:
                replayed = None
        if replayed is None:  # recorded before ADDs were recorded: the current config, its ids
            replayed = request.replace(
                command=env["CNI_COMMAND"], container_id=endpoint.container_id,
                ifname=endpoint.ifname, netns=env["CNI_NETNS"], env=env, netns_fd=None,
            )
        return Context(replayed, fd, replayed.env, peers)

    def _open_sandbox(self, sandbox: Sandbox | None, request: Request) -> int | None:
        """The sandbox's netns, open: via our pin first (the runtime's path may be gone or
        reused); any candidate must BE the sandbox's netns. None when it is gone."""
        if sandbox is None:
            return self._open_optional(request.netns, fd=request.netns_fd)
        candidates = [(None, request.netns_fd), (sandbox.pin, None), (request.netns, None), (sandbox.netns, None)]
        for path, given in candidates:
            fd = self._open_optional(path or "", fd=given) if (path or given is not None) else None
            if fd is None:
                continue
            if netns.identity_of(fd) == netns.Identity(sandbox.ns_dev, sandbox.ns_ino):
                return fd
            os.close(fd)
        return None

    @staticmethod
    def _unpin_unrecorded(tx, request: Request) -> None:
        """A pin named for this container with no sandbox record: an ADD died between
        pinning and its commit."""
        pin = os.path.join(pin_dir(request.env), request.container_id)
        if os.path.exists(pin) and tx.get_sandbox(request.container_id) is None:
            netns.unpin(pin)

    def _delete_unrecorded(self, request: Request, ep_id: str) -> None:
        """No record (never added, already deleted, or lost in a crash): converge the kernel."""
        cleanup = getattr(self.driver, "delete_unrecorded", None)
        if cleanup is None:
            return
        fd = self._open_optional(request.netns, fd=request.netns_fd)
        try:
            if fd is not None and not self.driver.uses_host_netns and netns.identity_of(fd) == netns.own_identity():
                fd_for_driver = None  # never touch the host's own interfaces
                os.close(fd)
                fd = None
            else:
                fd_for_driver = fd
            cleanup(Context(request, fd_for_driver, request.env), ep_id)
        finally:
            if fd is not None:
                os.close(fd)

    # ---- CHECK ---------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        store = open_store(request)
        prev_raw = request.config.get("prevResult")
        prev = Result.parse(prev_raw, request.version) if prev_raw else None
        ep_id = endpoint_id(request.network, request.container_id, request.ifname)
        joins = getattr(self.driver, "joins_sandbox", False)
        target = self.driver.target_container(request) if joins else None
        with ExitStack() as stack:
            fd = self._open_required(request)
            stack.callback(os.close, fd)
            if not joins:
                self._guard_host_netns(request, fd, self.driver.uses_host_netns)
            tx = stack.enter_context(store.transaction(write=False))
            endpoint = tx.get_endpoint(ep_id)
            if endpoint is None or not endpoint.active:
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
                self._check_membership(tx, request, endpoint, sandbox, target, peers, fd)
            network = tx.get_network(endpoint.network)
            drivers.load(endpoint.driver).check(Context(request, fd, request.env, peers), network, endpoint, sandbox, prev)

    def _check_membership(self, tx, request, endpoint, sandbox, target, peers, fd) -> None:
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
            if getattr(peer_driver, "membership_only", False):
                continue
            ctx = self._context_for(ep, request, sandbox, fd)
            recorded = recorded_result(ep)
            if recorded is not None:  # its interfaces, named by the path the replay uses (the pin)
                for iface in recorded.interfaces:
                    if iface.sandbox:
                        iface.sandbox = ctx.request.netns
            peer_driver.check(ctx, tx.get_network(ep.network), ep, sandbox, recorded)

    # ---- GC / STATUS ---------------------------------------------------------------------
    def gc(self, request: Request) -> None:
        valid = _valid_attachments(request.config)
        if valid is None:  # no list given (cnitool gc): no information, remove nothing
            why = (f"GC of {request.network}: no cni.dev/valid-attachments (nor cni.dev/attachments) "
                   f"in the config, so nothing is removed")
            sys.stderr.write(f"cnm: {why}\n")
            log.message(request.env, request.config, "info", why, command="GC")  # the operator's log too
            return
        from . import reconcile

        store = open_store(request)
        errors = []
        with ExitStack() as stack:
            try:
                tx = stack.enter_context(store.transaction())
            except StoreError as exc:
                raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
            swept = reconcile.Report()
            for sandbox in reconcile.vanished_sandboxes(tx):  # netns gone: nothing there is valid
                reconcile.release_sandbox(self, tx, sandbox, request, request.env, swept)
            for stale in tx.list_endpoints(network=request.network):
                if (stale.container_id, stale.ifname) in valid:
                    continue
                endpoint = tx.get_endpoint(stale.id)  # an earlier leave may have removed it
                if endpoint is None:
                    continue
                if not endpoint.active and self._active_members(tx, endpoint.sandbox):
                    continue  # held by the sandbox's remaining members (shared netns)
                sandbox = tx.get_sandbox(endpoint.sandbox)
                fd = self._open_sandbox(sandbox, request) if sandbox is not None else None
                try:
                    errors.extend(self._leave(tx, request, endpoint, sandbox, fd))
                finally:
                    if fd is not None:
                        os.close(fd)
            # Kernel objects and pins no record owns (an ADD that died before its commit).
            reconcile.sweep_orphans(tx, request.env, swept, pins=pin_dir(request.env))
            errors.extend(CNIError(PLUGIN_FAILURE, f"GC could not remove {a.kind} {a.name}", a.error)
                          for a in swept.errors)
        gc_extra = getattr(self.driver, "gc", None)
        if gc_extra is not None:
            try:
                gc_extra(request, valid)
            except CNIError as err:
                errors.append(err)
        if errors:
            raise CNIError(errors[0].code, errors[0].msg, "; ".join(f"{e.msg}: {e.details}" for e in errors))

    def status(self, request: Request) -> None:
        """50: an ADD cannot succeed now (store not writable, driver or IPAM says so);
        51: existing endpoints of this network may have lost connectivity."""
        self._network_options(request)
        try:
            with open_store(request).transaction() as tx:  # an ADD needs to write
                endpoints = tx.list_endpoints(network=request.network)
        except StoreError as exc:
            raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
        self.driver.status(request)
        degraded = getattr(self.driver, "degraded", None)
        problem = degraded(request, endpoints) if degraded is not None and endpoints else None
        if problem:
            raise CNIError(LIMITED_CONNECTIVITY, "existing endpoints may have limited connectivity", problem)


def _valid_attachments(config) -> set[tuple[str, str]] | None:
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in config:
            items = config[key] or []
            if not isinstance(items, list):
                raise CNIError(INVALID_CONFIG, f"invalid {key}", "must be a list of {containerID, ifname}")
            return {
                (str(a.get("containerID", "")), str(a.get("ifname", "")))
                for a in items
                if isinstance(a, dict)
            }
    return None


def _unwind(stack: ExitStack) -> None:
    """Roll back a failed ADD; errors while undoing must not hide the original error."""
    try:
        stack.close()
    except Exception:
        pass


def _overlapped(leave, delete) -> None:
    """leave() in a second thread while delete() runs here, for a driver whose two halves
    touch different kernel objects: deleting a veth and removing nftables elements each
    wait for an RCU grace period (~15-30 ms), and waiting for both at once halves a DEL.
    The store's write lock is held throughout, so no other command sees the halfway state.
    The thread shares this one's namespaces (a new thread starts in its creator's netns).
    leave()'s error wins (it is the first step); both always run to the end."""
    import threading

    from .linux import links  # noqa: F401 -- pyroute2's first import is not safe to race (import cycle)

    failure: list[BaseException] = []

    def run_leave():
        try:
            leave()
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)

    thread = threading.Thread(target=run_leave, name="cnm-leave")
    thread.start()
    try:
        delete()
    finally:
        thread.join()
        if failure:
            raise failure[0]
