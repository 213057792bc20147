"""Where a store pins its sandboxes' network namespaces, and how to tell that a pin
directory seen from here is the one the pins were made in.

Each store pins in a directory of its own, `<run dir>/netns/<store tag>/` (run dir:
$CNM_RUN_DIR, else /run/cnm), so a sweep of one store never meets another store's pins.
The directory holds an epoch file written once when the directory is made; a sandbox
records the epoch of the directory it was pinned in. Only where that epoch reads back the
same is the absence of a pin evidence that the namespace went: in another mount namespace
(a toolbox container with its own /run) or after /run was replaced, the directory is
missing or has another epoch, and nothing is judged from it.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from .model import STORE_TAG_LEN

RUN_DIR_ENV = "CNM_RUN_DIR"
DEFAULT_RUN_DIR = "/run/cnm"
EPOCH_FILE = ".epoch"
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


def read_epoch(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, EPOCH_FILE)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def ensure_epoch(directory: str, make_dirs) -> str:
    """The directory's epoch; the directory (`make_dirs(path, mode)`) and its epoch are made
    when missing. Two processes making it at once agree on the first one written."""
    epoch = read_epoch(directory)
    if epoch is not None:
        return epoch
    make_dirs(directory, 0o700)
    path = os.path.join(directory, EPOCH_FILE)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    try:
        os.link(tmp, path)  # never replaces an epoch another process wrote first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return read_epoch(directory) or ""


def is_pin_name(name: str) -> bool:
    """A directory entry that may be a pin (not the epoch file or its temporaries)."""
    return not name.startswith(".")
