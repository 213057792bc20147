"""Fault injection for the crash-safety tests (never set in production).

CNM_FAULT=<command>:<step> makes the process end abruptly at that numbered step, with
os._exit: no `finally`, no rollback, no cleanup -- as a SIGKILL would. The tests then
send what a runtime would send next (DEL, or GC) and check that nothing is left.

Call sites guard with a dict lookup on the request's env (`if FAULT_ENV in env`) and
only then import this module, so an unset switch costs nothing.

Steps are numbered in the order a command reaches them; a plugin type that has no
such step (null, host: no IPAM, no veth) just never reaches it.
"""

from __future__ import annotations

import os
import sys

FAULT_ENV = "CNM_FAULT"
EXIT_CODE = 137  # what a shell reports for SIGKILL

STEPS = {
    # intent: inside the transaction recording the intent; commit: inside the outcome's,
    # after its writes, before COMMIT (SQLite then rolls it back, as on a crash or full disk)
    "add": ("intent", "ipam", "veth", "addresses", "nft", "before-commit", "commit", "after-commit"),
    "del": ("intent", "veth", "nft", "ipam", "before-commit", "commit", "after-commit"),
}


def number(command: str, step: str) -> int:
    return STEPS[command].index(step) + 1


def crash_point(env, command: str, step: str) -> None:
    """End the process now when CNM_FAULT names this step (by number or by name)."""
    wanted = env.get(FAULT_ENV, "")
    cmd, _, at = wanted.partition(":")
    if cmd.lower() != command or at not in (str(number(command, step)), step):
        return
    sys.stderr.write(f"cnm: fault injected at {command} step {number(command, step)} ({step})\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)
