"""Taking endpoints down, below the controller: DEL, GC, ADD's vanished check and the
node-wide reconcile all go through `teardown()`.

The protocol, for any set of endpoints of one sandbox, under that sandbox's lock:
  1. one short store transaction picks them and marks them `deleting` (the intent),
  2. each is torn down through its own driver, with its own recorded ADD (the config and
     CNI_ARGS it was added with: a DEL may come through another plugin type, with no
     netns, or with a changed config) -- no store lock held,
  3. one short transaction drops the records of those torn down, keeps the others (with
     the error) for a retry, and drops the sandbox (and unpins it) when nothing is left.
A command killed anywhere leaves records in `deleting` (or `adding`), which the next DEL,
ADD retry or sweep finishes: whoever holds the sandbox's lock knows nobody else is at it.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Callable

from . import drivers
from .cni.errors import PLUGIN_FAILURE, CNIError
from .cni.request import Request, parse
from .cnm.locks import sandbox_key
from .cnm.model import DELETING, READY, Endpoint, Sandbox, endpoint_id
from .drivers.base import RECORD_KEY, RESUMED_KEY, Context
from .faults import crash_point
from .linux import links  # noqa: F401 -- before _overlapped's threads: pyroute2's first import is not safe to race
from .linux import netns
from .node import Node

Choose = Callable[[object, Sandbox | None], list[Endpoint]]



def lock_key(endpoint: Endpoint, sandbox: Sandbox | None) -> str:
    if sandbox is None:
        return sandbox_key(endpoint.sandbox, 0, 0)
    return sandbox_key(sandbox.id, sandbox.ns_dev, sandbox.ns_ino)


def context_for(node: Node, endpoint: Endpoint, request: Request, sandbox: Sandbox | None, fd: int | None,
                peers: tuple = ()) -> Context:
    """The Context to act on `endpoint` with while serving `request`.

    The request's own attachment (its DEL or CHECK) gets the request. Any other endpoint
    (torn down by the last member's DEL, by GC, by a sweep, or left by a dead ADD) gets its
    ADD replayed: the recorded config and CNI_ARGS, CNI_CONTAINERID/CNI_IFNAME of its own
    attachment (a delegated IPAM releases by those) and the sandbox's pin as CNI_NETNS."""
    extra = dict(store_id=node.store_id, node_lock=node.node_lock, live_endpoints=node.live_endpoints)
    own = endpoint_id(request.network, request.container_id, request.ifname)
    if request.command in ("DEL", "CHECK") and endpoint.id == own:
        return Context(request, fd, request.env, peers, **extra)
    path = (sandbox.pin or sandbox.netns) if sandbox is not None else ""
    env = dict(request.env)
    env.update(CNI_COMMAND="CHECK" if request.command == "CHECK" else "DEL",
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
    return Context(replayed, fd, replayed.env, peers, **extra)


def sweep_request(env, network: str = "") -> Request:
    """A request for work no runtime asked for (sweeps): each endpoint then replays its own ADD."""
    env = dict(env, CNI_COMMAND="GC", CNI_CONTAINERID="", CNI_NETNS="", CNI_IFNAME="", CNI_ARGS="")
    stdin = json.dumps({"cniVersion": "1.1.0", "name": network or "cnm-reconcile", "type": "cnm-none"})
    return parse(env, stdin.encode())


def sweep_context(node: Node, request: Request | None = None) -> Context:
    """The Context of a sweep of `node`'s store (no netns, no peers)."""
    return Context(request or sweep_request(node.env), None, node.env, store_id=node.store_id,
                   node_lock=node.node_lock)


def tear_down_one(ctx: Context, network, endpoint: Endpoint, sandbox: Sandbox | None) -> None:
    """Leave + delete through the endpoint's own driver (whatever plugin serves this command)."""
    driver = drivers.load(endpoint.driver)
    if driver.leave_overlaps_delete:
        _overlapped(lambda: driver.leave(ctx, network, endpoint, sandbox),
                    lambda: driver.delete_endpoint(ctx, network, endpoint))
    else:
        driver.leave(ctx, network, endpoint, sandbox)
        driver.delete_endpoint(ctx, network, endpoint)


# ---- what to take down ---------------------------------------------------------------------
def for_del(ep_id: str) -> Choose:
    """DEL of one attachment: its container leaves the sandbox. The endpoint goes at once when
    no other container shares the sandbox (or it owns nothing); otherwise it is kept for the
    others until the last member leaves, who takes every kept endpoint down with it. Whatever
    a dead command left unfinished in the sandbox goes too (the caller holds the lock)."""

    def choose(tx, sandbox: Sandbox | None) -> list[Endpoint]:
        endpoint = tx.get_endpoint(ep_id)
        if endpoint is None:
            return []
        endpoint.active = False
        tx.put_endpoint(endpoint)
        everything = tx.list_endpoints(sandbox=endpoint.sandbox)
        members = {e.container_id for e in everything if e.active}
        others = members - {endpoint.container_id}
        if others:
            owns_nothing = drivers.load(endpoint.driver).membership_only
            doomed = [endpoint] if owns_nothing or endpoint.phase != READY else []
        elif endpoint.container_id in members:  # the same container keeps other endpoints here
            doomed = [endpoint]
        else:
            doomed = [e for e in everything if not e.active]
        ids = {e.id for e in doomed}
        doomed += [e for e in everything if e.phase != READY and e.id not in ids]
        return doomed

    return choose


def everything(tx, sandbox: Sandbox | None) -> list[Endpoint]:
    """A sandbox whose netns is gone (or abandoned): all of it."""
    return tx.list_endpoints(sandbox=sandbox.id) if sandbox is not None else []


def unfinished(tx, sandbox: Sandbox | None) -> list[Endpoint]:
    """What commands that died left in a sandbox (records still `adding` or `deleting`)."""
    return [e for e in everything(tx, sandbox) if e.phase != READY]


def only(ep_ids: set[str]) -> Choose:
    def choose(tx, sandbox: Sandbox | None) -> list[Endpoint]:
        return [e for e in (tx.get_endpoint(i) for i in sorted(ep_ids)) if e is not None]

    return choose


# ---- the protocol --------------------------------------------------------------------------
def teardown(node: Node, request: Request, sandbox_id: str, choose: Choose,
             open_fd: Callable[[Sandbox | None], int | None] = lambda sb: None) -> dict[str, CNIError]:
    """Steps 1-3 of the module docstring for the endpoints `choose` picks in sandbox
    `sandbox_id`; the caller holds the sandbox's lock. Returns the errors by endpoint id."""
    with node.transaction() as tx:
        sandbox = tx.get_sandbox(sandbox_id)
        doomed = choose(tx, sandbox)
        for ep in doomed:
            if ep.phase != READY:  # an earlier teardown (or ADD) of it stopped half-way
                ep.data[RESUMED_KEY] = True
            ep.phase, ep.active = DELETING, False
            tx.put_endpoint(ep)
        networks = {ep.network: tx.get_network(ep.network) for ep in doomed}
        # The sandbox's endpoints, as they are now: a driver may hand something over to one
        # that stays (a host port the same container publishes on two networks).
        peers = tuple(tx.list_endpoints(sandbox=sandbox_id)) if sandbox is not None else ()
        empty = not doomed and sandbox is not None and not peers
    _fault(request, "intent")
    if empty:  # nothing of it left (an earlier run failed only at the end)
        _drop_empty(node, sandbox)
        return {}
    if not doomed:
        return {}
    errors: dict[str, CNIError] = {}
    fd = open_fd(sandbox)
    try:
        for ep in doomed:
            ctx = context_for(node, ep, request, sandbox, fd, peers)
            try:
                tear_down_one(ctx, networks.get(ep.network), ep, sandbox)
            except CNIError as err:
                errors[ep.id] = err
            except Exception as exc:  # one broken record must not stop the others
                errors[ep.id] = CNIError(PLUGIN_FAILURE, f"teardown of {ep.id} failed", f"{type(exc).__name__}: {exc}")
    finally:
        if fd is not None:
            os.close(fd)
    _fault(request, "before-commit")
    with node.transaction() as tx:
        for ep in doomed:
            if ep.id in errors:
                ep.data["del_error"] = f"{errors[ep.id].msg}: {errors[ep.id].details}".strip(": ")
                tx.put_endpoint(ep)
            else:
                tx.delete_endpoint(ep.id)
        if sandbox is not None and not tx.list_endpoints(sandbox=sandbox_id):
            if sandbox.pin:
                netns.unpin(sandbox.pin)
            tx.delete_sandbox(sandbox_id)
        _fault(request, "commit")
    return errors


def _fault(request: Request, step: str) -> None:
    if request.command == "DEL" and "CNM_FAULT" in request.env:  # tests only: cni_plugins/faults.py
        crash_point(request.env, "del", step)


def _drop_empty(node: Node, sandbox: Sandbox) -> None:
    with node.transaction() as tx:
        if tx.list_endpoints(sandbox=sandbox.id):
            return
        if sandbox.pin:
            netns.unpin(sandbox.pin)
        tx.delete_sandbox(sandbox.id)


def open_sandbox(sandbox: Sandbox | None, paths: tuple[str, ...] = (), fd: int | None = None) -> int | None:
    """The sandbox's netns, open (a new descriptor): the given descriptor, then our pin (the
    runtime's path may be gone or reused), then `paths`, then the runtime's recorded path;
    each must BE the sandbox's netns. None when none is (the netns is gone)."""
    if sandbox is None or (sandbox.ns_dev, sandbox.ns_ino) == (0, 0):
        return None
    wanted = netns.Identity(sandbox.ns_dev, sandbox.ns_ino)
    if fd is not None:
        try:
            if netns.is_netns_fd(fd) and netns.identity_of(fd) == wanted:
                return os.dup(fd)
        except OSError:
            pass
    for path in (sandbox.pin, *paths, sandbox.netns):
        if not path:
            continue
        try:
            candidate = netns.open_netns(path)
        except netns.NetnsError:
            continue
        if netns.identity_of(candidate) == wanted:
            return candidate
        os.close(candidate)
    return None


def open_sandbox_for_sweep(sandbox: Sandbox | None) -> int | None:
    """open_sandbox(), never the host's own netns (a sweep acts there for no one: a runtime's
    DEL may, CNI_NETNS_OVERRIDE; a GC or `cnmctl gc` must not set the host's lo down)."""
    fd = open_sandbox(sandbox)
    if fd is not None and not (sandbox is not None and sandbox.is_host) and \
            netns.identity_of(fd) == netns.own_identity():
        os.close(fd)
        return None
    return fd


def release(node: Node, request: Request, sandbox: Sandbox, choose: Choose = everything,
            open_fd: Callable[[Sandbox | None], int | None] = open_sandbox_for_sweep,
            still: Callable[[Sandbox], bool] | None = None) -> dict[str, CNIError] | None:
    """teardown() if nobody holds the sandbox's lock now (a command at work on it proves it
    alive), and, with `still`, only if `still(sandbox)` (the judgement, made again under the
    lock on the sandbox as recorded then) holds; None when it was busy or judged otherwise."""
    key = sandbox_key(sandbox.id, sandbox.ns_dev, sandbox.ns_ino)
    with node.sandbox_locks.try_held(key) as free:
        if not free:
            return None
        if still is not None:
            with node.transaction(write=False) as tx:
                now = tx.get_sandbox(sandbox.id)
            if now is None or not still(now):
                return None
        return teardown(node, request, sandbox.id, choose, open_fd)


def describe(err) -> str:
    if isinstance(err, CNIError):
        return f"{err.msg}: {err.details}" if err.details else err.msg
    return f"{type(err).__name__}: {err}"


def _overlapped(leave, delete) -> None:
    """leave() in a second thread while delete() runs here, for a driver whose two halves
    touch different kernel objects (deleting a veth and removing nftables elements each wait
    for the kernel; waiting for both at once shortens a DEL). The thread shares this one's
    namespaces (a new thread starts in its creator's netns). leave()'s error wins (it is the
    first step); both always run to the end."""

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
