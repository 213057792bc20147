"""One store as a command sees it: the store, its sandbox locks, its pin directory and the
node-wide locks. Every command, sweep and view opens its store through here."""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from typing import Iterator

from .cni.errors import INVALID_CONFIG, NOT_AVAILABLE, TRY_AGAIN_LATER, CNIError
from .cni.paths import state_path_problem
from .cnm import pins
from .cnm.locks import KeyedLocks, LockTimeout
from .cnm.model import READY, Endpoint
from .cnm.store import Store, StoreError, state_dir
from .linux import fs

NODE_LOCK_FILE = "node.lock"
_observer = None  # observe(): called with the Node of every command


def observe(callback) -> None:
    """Have `callback(node)` called with the store of every command as it opens it, in the
    command's thread (the resident helper learns which stores it serves in which network
    namespace: cli/nftwatch.py); None stops it. It must be cheap and must not raise."""
    global _observer
    _observer = callback


class Node:
    def __init__(self, directory: str, env):
        self.env = env
        self.store = Store(directory)
        self.sandbox_locks = KeyedLocks(os.path.join(directory, "sandboxes.lock"))
        self._id: str | None = None

    @classmethod
    def of_request(cls, request) -> "Node":
        """The store a plugin command names (config key `stateDir`, $CNM_STATE_DIR, default)."""
        directory = request.config.get("stateDir")
        problem = None if directory is None else state_path_problem(directory)
        if problem:
            raise CNIError(INVALID_CONFIG, "invalid stateDir", f"stateDir={problem}")
        node = cls(state_dir(directory, request.env), request.env)
        if _observer is not None:
            _observer(node)
        return node

    @property
    def store_id(self) -> str:
        if self._id is None:
            try:
                self._id = self.store.id()
            except OSError as exc:
                raise CNIError(NOT_AVAILABLE, "CNM store unavailable", f"{self.store.directory}: {exc.strerror}") from None
            except StoreError as exc:
                raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
        return self._id

    @property
    def pin_dir(self) -> str:
        return pins.pin_dir(self.env, self.store_id)

    def pin_path(self, sandbox_id: str) -> str:
        return pins.pin_path(self.pin_dir, sandbox_id)

    @contextmanager
    def transaction(self, write: bool = True):
        """A store transaction; a store that cannot be used, or cannot commit (disk full,
        read-only, I/O error), is CNI code 50: try again later."""
        try:
            with self.store.transaction(write) as tx:
                yield tx
        except StoreError as exc:
            raise CNIError(NOT_AVAILABLE, "CNM store unavailable", str(exc)) from None
        except sqlite3.Error as exc:
            raise CNIError(NOT_AVAILABLE, "CNM store unavailable", f"{self.store.path}: {exc}") from None

    def live_endpoints(self) -> list[Endpoint]:
        """The endpoints whose ADD completed (READY), as the store holds them now."""
        with self.transaction(write=False) as tx:
            return [ep for ep in tx.list_endpoints() if ep.phase == READY]

    @contextmanager
    def sandbox_lock(self, key: str) -> Iterator[None]:
        try:
            held = self.sandbox_locks.held(key)
            held.__enter__()
        except LockTimeout as exc:
            raise CNIError(TRY_AGAIN_LATER, "sandbox busy", str(exc)) from None
        except OSError as exc:
            raise CNIError(NOT_AVAILABLE, "cannot lock the sandbox", f"{self.sandbox_locks.path}: {exc}") from None
        try:
            yield
        finally:
            held.__exit__(None, None, None)

    @contextmanager
    def node_lock(self, name: str) -> Iterator[None]:
        """A lock of the whole node (every store): e.g. the host ports being published."""
        directory = pins.run_dir(self.env)
        try:
            fs.make_dirs(directory, 0o700)
            with KeyedLocks(os.path.join(directory, NODE_LOCK_FILE)).held(name):
                yield
        except LockTimeout as exc:
            raise CNIError(NOT_AVAILABLE, "node busy", str(exc)) from None

