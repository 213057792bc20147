"""Where a config may point our state: absolute paths on a real filesystem.

A path under /proc, /sys or /dev (e.g. /proc/self/cwd, which is whatever
directory the runtime started us in) is never a state directory.
"""

from __future__ import annotations

import os

PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def state_path_problem(path: object) -> str | None:
    """Why `path` cannot hold state, or None when it can."""
    if not isinstance(path, str) or not path or "\0" in path:
        return f"{path!r} must be a non-empty string"
    if not os.path.isabs(path):
        return f"{path!r} must be an absolute path"
    real = os.path.realpath(path)
    for root in PSEUDO_ROOTS:
        if real == root or real.startswith(root + "/") or os.path.normpath(path).startswith(root + "/"):
            return f"{path!r} is under {root}, not a state directory"
    return None
