"""Is a sandbox's network namespace still there? Judged only from evidence, never guessed.

A destructive path (the vanished-netns check of ADD, GC, `cnmctl gc`) may release a
sandbox only when this module says DEAD or ABANDONED:

  ALIVE      our pin, or the runtime's own path, is a mount of exactly that namespace
  DEAD       recorded in an earlier boot (its namespace cannot exist any more); or it was
             pinned from this very mount namespace (so its pin would be seen here) and
             neither the pin nor the runtime's path is that namespace any more
  ABANDONED  still pinned by us, but every runtime let go of it: the runtime's path is
             gone, and no task, descriptor or other mount of it can be seen, from the
             pid namespace the sandbox was made in (a runtime that forgot a failed DEL)
  UNKNOWN    anything else: its pin cannot be seen from here (pinned from another mount
             namespace: a toolbox or debug container with its own /run, a helper in a
             private mount namespace; or by an older version, which did not record it).
             Never released: only its runtime's DEL or GC, or a reboot, take it away.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .cnm.model import Sandbox
from .linux import netns, nsusers

ALIVE, DEAD, ABANDONED, UNKNOWN = "alive", "dead", "abandoned", "unknown"
MNTNS_KEY = "mntns"  # sandbox.data: the mount namespace its pin was made in
PIDNS_KEY = "pidns"  # sandbox.data: the pid namespace of the command that made it


@dataclass(frozen=True)
class Verdict:
    state: str
    why: str

    @property
    def releasable(self) -> bool:
        return self.state in (DEAD, ABANDONED)


class Judge:
    """Judges sandboxes; knows this process's mount namespace for one pass."""

    def __init__(self):
        self._mount_namespace = nsusers.mount_namespace()
        self._users = None  # nsusers.Users, read once on the first abandonment question

    def pins_trusted(self, sb: Sandbox) -> bool:
        """`sb` was pinned from this mount namespace: whether its pin is there is seen here."""
        made_in = sb.data.get(MNTNS_KEY)
        return bool(sb.pin) and made_in is not None and made_in == self._mount_namespace

    def judge(self, sb: Sandbox, abandonment: bool = False) -> Verdict:
        """ALIVE/DEAD/UNKNOWN; with `abandonment` (sweeps: it reads all of /proc) a pinned
        sandbox may also be found ABANDONED."""
        if sb.is_host:
            return Verdict(ALIVE, "the host's own namespace")
        if (sb.ns_dev, sb.ns_ino) == (0, 0):
            return Verdict(DEAD, "recorded in an earlier boot")
        pinned = is_namespace(sb.pin, sb.ns_dev, sb.ns_ino)
        on_path = is_namespace(sb.netns, sb.ns_dev, sb.ns_ino)
        if pinned:
            if abandonment and not on_path:
                return self._abandoned(sb)
            return Verdict(ALIVE, f"pinned at {sb.pin}")
        if on_path:
            return Verdict(ALIVE, f"the runtime's path {sb.netns}")
        if not self.pins_trusted(sb):
            return Verdict(UNKNOWN, f"its pin {sb.pin or '(none)'} was made in another mount namespace (or by "
                                    f"an older version) and cannot be seen from here; run `cnmctl gc` where "
                                    f"the plugins run")
        return Verdict(DEAD, f"its pin {sb.pin} was removed and the runtime's path {sb.netns} is gone")

    def _abandoned(self, sb: Sandbox) -> Verdict:
        busy = self.in_use(sb)
        if busy:
            return Verdict(ALIVE, f"pinned at {sb.pin}; {busy}")
        return Verdict(ABANDONED, f"the runtime's path {sb.netns or '(none)'} is gone and no process, descriptor "
                                  f"or other mount uses the namespace; only our pin {sb.pin} holds it")


    def in_use(self, sb: Sandbox) -> str:
        """What uses the namespace of `sb` besides our pin, or why that cannot be told; ""
        only when, seen from the pid namespace it was made in, no task, descriptor or other
        mount of it is there (reads all of /proc, once per Judge)."""
        made_in = sb.data.get(PIDNS_KEY)
        if made_in is None or made_in != nsusers.pid_namespace():
            return "its users cannot be seen from this pid namespace"
        if self._users is None:
            self._users = nsusers.Users()
        # Pins (ours, another store's sharing this netns, their propagated copies) hold it,
        # they do not use it.
        pin_root = os.path.dirname(os.path.dirname(sb.pin))
        held = self._users.of(sb.ns_dev, sb.ns_ino, ignore_under=(pin_root,)) or _sockets(sb)
        return f"in use: {', '.join(held[:3])}" if held else ""


def _sockets(sb: Sandbox) -> list[str]:
    """Sockets in the sandbox's netns (entered through its pin); unreadable: in use."""
    try:
        fd = netns.open_netns(sb.pin)
    except OSError:
        return ["(its sockets cannot be read)"]
    try:
        if netns.identity_of(fd) != netns.Identity(sb.ns_dev, sb.ns_ino):
            return ["(its pin is another namespace now)"]
        return [f"sockets ({s})" for s in nsusers.sockets_in(fd)]
    except OSError:
        return ["(its sockets cannot be read)"]
    finally:
        os.close(fd)


def is_namespace(path: str, dev: int, ino: int) -> bool:
    """`path`, as seen from here, is exactly netns (dev, ino)."""
    if not path:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
