"""GC of one network without the runtime's list of valid attachments (`cnmctl gc NETWORK`).

libcni's cache is shared with containerd, CRI-O and podman, so "every cached attachment
not listed" (cnitool's GC, which is given no list) would be every running container of
the network. Here only attachments whose namespace is provably gone are DELed
(runtime/liveness.py), each one reported with why it was DELed or kept; the plugins'
GC (the second phase) does not run, as it would have no list either. `collect_all` keeps
cnitool's semantics, for an operator who means it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass

from ..cnm.model import Sandbox, endpoint_id
from ..cnm.store import DB_NAME, Store, StoreError, state_dir
from ..liveness import Judge
from . import cache, liveness
from .conf import NetworkConfigList
from .libcni import CNIRunner

DELETED, WOULD_DELETE, KEPT, FAILED = "deleted", "would delete", "kept", "failed"
DISABLED = "the list sets disableGC"


@dataclass
class Outcome:
    """What GC did with one cached attachment."""

    action: str  # DELETED, WOULD_DELETE, KEPT or FAILED
    container_id: str
    ifname: str
    netns: str
    reason: str
    error: str = ""

    def as_json(self) -> dict:
        return {("containerID" if k == "container_id" else k): v for k, v in asdict(self).items()}


def collect_gone(runner: CNIRunner, net: NetworkConfigList, env, *, dry_run: bool = False) -> list[Outcome]:
    """DEL the cached attachments of `net` whose namespace is provably gone; keep the rest."""
    outcomes = []
    # disableGC: the list is shared by runtimes whose caches differ; it is never GCed here.
    untouchable = DISABLED if net.disable_gc else liveness.foreign_mount_namespace()
    judge = Judge()  # reads who uses which namespace once for the pass, if a path is gone
    for att in runner.cached_attachments_of(net.name):
        if untouchable:
            outcomes.append(_outcome(KEPT, att, untouchable))
            continue
        verdict = _verdict(att, net, env, judge)
        if not verdict.gone:
            outcomes.append(_outcome(KEPT, att, verdict.reason))
        elif dry_run:
            outcomes.append(_outcome(WOULD_DELETE, att, verdict.reason))
        else:
            outcomes.append(_delete_if_still_gone(runner, net, env, att, verdict))
    return outcomes


def collect_all(runner: CNIRunner, net: NetworkConfigList) -> tuple[list[Outcome], list[str]]:
    """cnitool's GC: DEL every cached attachment of `net`, then GC each plugin without a
    list; the outcomes and the plugins' errors."""
    if net.disable_gc:
        return [_outcome(KEPT, att, DISABLED) for att in runner.cached_attachments_of(net.name)], []
    outcomes = []
    for att in runner.cached_attachments_of(net.name):
        error = runner.del_cached(net, att)
        outcomes.append(_outcome(FAILED if error else DELETED, att, "--all: every cached attachment", error))
    return outcomes, runner.gc_plugins(net, None)


def netns_of(att: cache.CachedAttachment) -> str:
    """The attachment's netns path: the cached one; else (libcni before 1.2 -- containerd 1.6,
    podman 4 -- cached none) the `sandbox` its plugins reported for the interface, which is
    the CNI_NETNS they were given. "" when neither says (or they disagree)."""
    if att.netns:
        return att.netns
    interfaces = (att.result or {}).get("interfaces")
    if not isinstance(interfaces, list):
        return ""
    named = [i for i in interfaces if isinstance(i, dict) and i.get("sandbox")]
    paths = {str(i["sandbox"]) for i in named if i.get("name") == att.ifname} or {str(i["sandbox"]) for i in named}
    return paths.pop() if len(paths) == 1 else ""


def _verdict(att: cache.CachedAttachment, net: NetworkConfigList, env, judge: Judge) -> liveness.Verdict:
    path = netns_of(att)
    verdict = liveness.judge(path)
    if not verdict.gone:
        return verdict
    # The path is gone; the namespace may live on (our pin keeps it, and so may a process,
    # a descriptor or another mount: `ip netns add g1` entered by /proc/<pid>/ns/net). It is
    # gone only when nothing but our pin uses it, the node-wide gc's standard.
    sandbox = _recorded_sandbox(att, net, env)
    if sandbox is None:
        if liveness.names_a_process(path):
            return liveness.Verdict(False, f"{verdict.reason}, but no store recorded which namespace it was in "
                                           f"(another mount or process may hold it): DEL it, or gc --all")
        return verdict  # the runtime removed its own mount: its word, as for the reference plugins
    if (sandbox.ns_dev, sandbox.ns_ino) == (0, 0):  # recorded in an earlier boot
        return verdict
    busy = judge.in_use(sandbox)
    if busy:
        return liveness.Verdict(False, f"{verdict.reason}, but its namespace may live on: {busy}")
    return verdict


def _delete_if_still_gone(runner, net, env, att, verdict) -> Outcome:
    """DEL, unless the runtime re-ADDed the attachment since it was read (same container
    and ifname, a new netns: a restarted container)."""
    now = cache.read(runner.cache_dir, att.network, att.container_id, att.ifname)
    if now is None:
        return _outcome(KEPT, att, "its cache entry went away meanwhile (DELed by the runtime)")
    if netns_of(now) != netns_of(att) or not _verdict(now, net, env, Judge()).gone:  # /proc read afresh
        return _outcome(KEPT, now, "re-ADDed meanwhile")
    error = runner.del_cached(net, now)
    return _outcome(FAILED if error else DELETED, now, verdict.reason, error)


def _recorded_sandbox(att: cache.CachedAttachment, net: NetworkConfigList, env) -> Sandbox | None:
    """The sandbox (its namespace, pin, where it was made) our store recorded for this
    attachment, when a plugin of ours made it (any store the list's plugins name, else the
    default one)."""

    dirs = {state_dir(p.get("stateDir") if isinstance(p.get("stateDir"), str) else None, env)
            for p in net.plugins if str(p.get("type", "")).startswith("cnm-")}
    ep_id = endpoint_id(att.network, att.container_id, att.ifname)
    for directory in sorted(dirs):
        if not os.path.exists(os.path.join(directory, DB_NAME)):
            continue
        try:
            with Store(directory).transaction(write=False) as tx:
                endpoint = tx.get_endpoint(ep_id)
                sandbox = tx.get_sandbox(endpoint.sandbox) if endpoint is not None else None
                if sandbox is not None and tx.made_in_earlier_boot(sandbox):  # its (dev, ino) may be reused
                    sandbox = dataclasses.replace(sandbox, ns_dev=0, ns_ino=0)
        except StoreError:
            continue
        if sandbox is not None:
            return sandbox
    return None


def _outcome(action: str, att: cache.CachedAttachment, reason: str, error: str = "") -> Outcome:
    return Outcome(action, att.container_id, att.ifname, netns_of(att), reason, error)
