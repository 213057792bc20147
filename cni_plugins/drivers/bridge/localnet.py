"""route_localnet on a bridge: on only while one of its endpoints publishes an IPv4 port
that the host reaches at 127.0.0.1, and put back to the value found after the last.

Why it is needed: 127.0.0.1:hostPort from the host is DNATed in the output hook and
re-routed to the bridge, which the kernel allows for a 127/8 source only with
route_localnet on that bridge. Why not longer: the knob also lets the bridge accept
packets *to* and *from* 127/8; linux/nft/layout.py drops those, and this keeps the knob off
whenever nothing needs it.

Who needs it, kept where any process can see it (not in a helper's memory), beside the
netns pins in /run (tmpfs: it goes with the bridges at reboot):

    RUN_DIR/route_localnet/<netns>/<bridge>/found          the value before the first
    RUN_DIR/route_localnet/<netns>/<bridge>/users/<owner>  one empty file per endpoint

<netns> is the identity (dev-ino) of the network namespace the bridge is in: one run dir
serves every netns a resident helper adopts, and bridges of one name in two of them are two
knobs. <owner> is the endpoint's owner tag (`<endpoint id>@<store tag>`), so a sweep knows
which store's it is. A bridge's directory holds only these two names, whatever the bridge
is called. A user is recorded before the knob is set and removed when its endpoint goes; the
one whose removal leaves `users` empty (rmdir succeeds: O(1) whatever the number of
endpoints) restores `found`. Every directory is 0700 whatever the umask. The driver holds
the node lock "localnet" around acquire and release, so they never interleave.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Mapping

from ...cnm import pins
from ...linux import netns, sysctl
from ...linux.fs import make_dirs

SUBDIR = "route_localnet"
FOUND = "found"
USERS = "users"
LEGACY_SUBDIR = "localnet"  # the layout before: <bridge>/<endpoint id> and <bridge>.found
LEGACY_FOUND_SUFFIX = ".found"


def _key(bridge: str) -> str:
    return f"net/ipv4/conf/{bridge}/route_localnet"


def directory(env: Mapping[str, str]) -> str:
    """The markers of the network namespace this thread is in."""
    identity = netns.own_identity()
    return os.path.join(pins.run_dir(env), SUBDIR, f"{identity.dev}-{identity.ino}")


def needed_by(elements: Iterable) -> bool:
    """Do these nft elements publish an IPv4 port the host reaches at 127.0.0.1 (bound to every
    address, or to one in 127.0.0.0/8)? Ports bound to another address do not need the knob."""
    for e in elements:
        if e.set == "ports4_any_addr":
            return True
        if e.set == "ports4_addr":
            parts = e.key["concat"]
            if ipaddress.ip_address(parts[1]).is_loopback:
                return True
    return False


def acquire(env: Mapping[str, str], bridge: str, owner: str) -> None:
    """Record that `owner` (an endpoint's owner tag) needs route_localnet on `bridge`, then
    turn it on."""
    own = os.path.join(directory(env), bridge)
    users = os.path.join(own, USERS)
    if not os.path.isdir(users):  # the first user: remember what to put back
        make_dirs(own, 0o700)
        found = os.path.join(own, FOUND)
        if not os.path.exists(found):  # (kept when a first acquire stopped right after writing it)
            _write(found, sysctl.read(_key(bridge)))
        make_dirs(users, 0o700)
    os.close(os.open(os.path.join(users, owner), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    sysctl.ensure(_key(bridge), "1")


def release(env: Mapping[str, str], owner: str, bridge: str | None = None) -> None:
    """`owner` no longer needs route_localnet; after the last user of its bridge, the knob gets
    back the value found. Without `bridge` (a DEL with no record), every bridge of this netns
    is looked at. Nothing recorded: nothing to do."""
    base = directory(env)
    if bridge is None:
        try:
            bridges = os.listdir(base)
        except FileNotFoundError:
            bridges = []
    else:
        bridges = [bridge]
    released = False
    for name in bridges:
        own = os.path.join(base, name)
        try:
            os.unlink(os.path.join(own, USERS, owner))
        except FileNotFoundError:
            continue
        released = True
        try:
            os.rmdir(os.path.join(own, USERS))
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue  # others still need it
            raise
        _restore(os.path.join(own, FOUND), name)
        _remove_empty(own, base)
    if not released:
        _release_legacy(env, owner.split("@", 1)[0], bridge)


def users(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(bridge, owner) of every user recorded in this netns (for sweeps)."""
    base = directory(env)
    found = []
    try:
        bridges = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    for name in bridges:
        try:
            found += [(name, owner) for owner in sorted(os.listdir(os.path.join(base, name, USERS)))]
        except (FileNotFoundError, NotADirectoryError):
            continue
    return found


def _restore(found_file: str, bridge: str) -> None:
    try:
        with open(found_file) as f:
            value = f.read().strip() or "0"
    except FileNotFoundError:
        value = "0"
    try:
        sysctl.ensure(_key(bridge), value)
    except OSError:
        pass  # the bridge is gone, and its knob with it (and the nft guards hold anyway)
    try:
        os.unlink(found_file)
    except FileNotFoundError:
        pass


def _remove_empty(*paths: str) -> None:
    for path in paths:
        try:
            os.rmdir(path)
        except OSError:
            return


def _release_legacy(env: Mapping[str, str], endpoint_id: str, bridge: str | None) -> None:
    """An endpoint recorded by the layout before this one (keyed by bridge name alone)."""
    base = os.path.join(pins.run_dir(env), LEGACY_SUBDIR)
    try:
        names = [bridge] if bridge is not None else [n for n in os.listdir(base)
                                                     if not n.endswith(LEGACY_FOUND_SUFFIX)]
    except FileNotFoundError:
        return
    for name in names:
        own = os.path.join(base, name)
        try:
            os.unlink(os.path.join(own, endpoint_id))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            continue
        try:
            os.rmdir(own)
        except OSError:
            continue  # others still need it
        _restore(own + LEGACY_FOUND_SUFFIX, name)
        _remove_empty(base)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
