"""Is a sandbox's network namespace still there? Judged only from evidence, never guessed.

A destructive path (the vanished-netns check of ADD, GC, `cnmctl gc`) may release a
sandbox only when this module says DEAD or ABANDONED:

  ALIVE      our pin, or the runtime's own path, is a mount of exactly that namespace
  DEAD       recorded in an earlier boot (its namespace cannot exist any more); or its
             pin directory is provably the one it was pinned in (cnm.pins epoch) and
             neither the pin nor the runtime's path is that namespace any more
  ABANDONED  still pinned by us, but every runtime let go of it: the runtime's path is
             gone, and no task, descriptor or other mount of it can be seen, from the
             pid namespace the sandbox was made in (a runtime that forgot a failed DEL)
  UNKNOWN    anything else: the pins cannot be seen from here (another mount
             namespace, /run replaced), or the evidence is not visible. Never released.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .cnm import pins
from .cnm.model import Sandbox

ALIVE, DEAD, ABANDONED, UNKNOWN = "alive", "dead", "abandoned", "unknown"
EPOCH_KEY = "pin_epoch"  # sandbox.data: the epoch of the pin directory it was pinned in
PIDNS_KEY = "pidns"  # sandbox.data: the pid namespace of the command that made it


@dataclass(frozen=True)
class Verdict:
    state: str
    why: str

    @property
    def releasable(self) -> bool:
        return self.state in (DEAD, ABANDONED)


class Judge:
    """Judges sandboxes; remembers each pin directory's epoch for one pass."""

    def __init__(self):
        self._epochs: dict[str, str | None] = {}

    def pins_trusted(self, sb: Sandbox) -> bool:
        """The pin directory seen here is the one `sb` was pinned in."""
        recorded = sb.data.get(EPOCH_KEY)
        if not sb.pin or not recorded:
            return False  # pinned by an older version: no epoch to compare
        directory = os.path.dirname(sb.pin)
        if directory not in self._epochs:
            self._epochs[directory] = pins.read_epoch(directory)
        return self._epochs[directory] == recorded

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
            where = os.path.dirname(sb.pin) if sb.pin else "(no pin)"
            return Verdict(UNKNOWN, f"its pin directory {where} here is not the one it was pinned in "
                                    f"(another mount namespace, /run replaced, or pinned by an older version)")
        return Verdict(DEAD, f"its pin {sb.pin} was removed and the runtime's path {sb.netns} is gone")

    @staticmethod
    def _abandoned(sb: Sandbox) -> Verdict:
        from .linux import nsusers

        made_in = sb.data.get(PIDNS_KEY)
        if made_in is None or made_in != nsusers.pid_namespace():
            return Verdict(ALIVE, f"pinned at {sb.pin}; its users cannot be seen from this pid namespace")
        held = nsusers.users(sb.ns_dev, sb.ns_ino, ignore_mounts=(sb.pin,))
        if held:
            return Verdict(ALIVE, f"pinned at {sb.pin}; in use: {', '.join(held[:3])}")
        return Verdict(ABANDONED, f"the runtime's path {sb.netns or '(none)'} is gone and no process, descriptor "
                                  f"or other mount uses the namespace; only our pin {sb.pin} holds it")


def is_namespace(path: str, dev: int, ino: int) -> bool:
    """`path`, as seen from here, is exactly netns (dev, ino)."""
    if not path:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)
