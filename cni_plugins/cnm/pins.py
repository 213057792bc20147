"""Where a store pins its sandboxes' network namespaces.

Each store pins in a directory of its own, `<run dir>/netns/<store tag>/` (run dir:
$CNM_RUN_DIR, else /run/cnm), so a sweep of one store never meets another store's pins.
"""

from __future__ import annotations

import hashlib
import os

from .model import STORE_TAG_LEN

RUN_DIR_ENV = "CNM_RUN_DIR"
DEFAULT_RUN_DIR = "/run/cnm"
MAX_NAME = 200  # a pin named after a longer sandbox id is named after its hash (NAME_MAX is 255)


def run_dir(env) -> str:
    return env.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def pin_root(env) -> str:
    return os.path.join(run_dir(env), "netns")


def pin_dir(env, store_id: str) -> str:
    return os.path.join(pin_root(env), store_id[:STORE_TAG_LEN])


def pin_path(directory: str, sandbox_id: str) -> str:
    name = sandbox_id if len(sandbox_id.encode()) <= MAX_NAME else "sha256-" + hashlib.sha256(sandbox_id.encode()).hexdigest()
    return os.path.join(directory, name)


def is_pin_name(name: str) -> bool:
    """A directory entry that may be a pin (pins are named after sandbox ids or their hash)."""
    return not name.startswith(".")
