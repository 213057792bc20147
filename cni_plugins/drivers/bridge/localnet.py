"""route_localnet on a bridge: on only while one of its endpoints publishes an IPv4 port
that the host reaches at 127.0.0.1, and put back to the value found after the last.

Why it is needed: 127.0.0.1:hostPort from the host is DNATed in the output hook and
re-routed to the bridge, which the kernel allows for a 127/8 source only with
route_localnet on that bridge. Why not longer: the knob also lets the bridge accept
packets *to* 127/8 from containers; linux/nft.py drops those (input chain), and this
keeps the knob off whenever nothing needs it.

Who needs it, kept where any process can see it (not in a helper's memory): one empty
file per endpoint, RUN_DIR/localnet/<bridge>/<endpoint id>, made before the knob is set
and removed when the endpoint goes. The one whose removal leaves the directory empty
(rmdir succeeds) restores the value recorded when the directory was made
(RUN_DIR/localnet/<bridge>.found). O(1) whatever the number of endpoints. Beside the
netns pins, in /run (tmpfs): it goes with the bridges at reboot. The driver holds the
node lock "localnet" around acquire and release, so they never interleave.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable, Mapping

from ...cnm import pins

SUBDIR = "localnet"
FOUND_SUFFIX = ".found"


def _key(bridge: str) -> str:
    return f"net/ipv4/conf/{bridge}/route_localnet"


def directory(env: Mapping[str, str]) -> str:
    return os.path.join(pins.run_dir(env), SUBDIR)


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


def acquire(env: Mapping[str, str], bridge: str, endpoint_id: str) -> None:
    """Record that `endpoint_id` needs route_localnet on `bridge`, then turn it on."""
    from ...linux import sysctl
    from ...linux.fs import make_dirs

    base = directory(env)
    make_dirs(base, 0o700)
    own = os.path.join(base, bridge)
    for _ in range(3):  # (a release may remove the directory between the two steps)
        try:
            os.mkdir(own, 0o700)
        except FileExistsError:
            pass
        else:  # the first endpoint of this bridge: remember what to put back
            _write(own + FOUND_SUFFIX, sysctl.read(_key(bridge)))
        try:
            os.close(os.open(os.path.join(own, endpoint_id), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            break
        except FileNotFoundError:
            continue
    sysctl.ensure(_key(bridge), "1")


def release(env: Mapping[str, str], endpoint_id: str, bridge: str | None = None) -> None:
    """`endpoint_id` no longer needs route_localnet; after the last endpoint of its bridge,
    the knob gets back the value found. Without `bridge` (a DEL with no record), every
    bridge's directory is looked at. Nothing recorded: nothing to do."""
    base = directory(env)
    if bridge is None:
        try:
            bridges = [b for b in os.listdir(base) if not b.endswith(FOUND_SUFFIX)]
        except FileNotFoundError:
            return
    else:
        bridges = [bridge]
    for name in bridges:
        own = os.path.join(base, name)
        try:
            os.unlink(os.path.join(own, endpoint_id))
        except FileNotFoundError:
            continue
        try:
            os.rmdir(own)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                continue  # others still need it
            raise
        _restore(own + FOUND_SUFFIX, name)


def _restore(found_file: str, bridge: str) -> None:
    from ...linux import sysctl

    try:
        with open(found_file) as f:
            value = f.read().strip() or "0"
    except FileNotFoundError:
        value = "0"
    try:
        sysctl.ensure(_key(bridge), value)
    except OSError:
        pass  # the bridge is gone, and its knob with it (and the input chain guards anyway)
    try:
        os.unlink(found_file)
    except FileNotFoundError:
        pass


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
