"""Directories with an explicit mode, whatever the caller's umask."""

from __future__ import annotations

import os


def make_dirs(path: str, mode: int) -> None:
    """Make `path` and every missing parent with exactly `mode` (no umask); directories
    that exist are left as they are."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)
