"""Running nft commands: libnftables in process, or the `nft` binary where the node lacks
the library (or CNM_NFT=exec asks for it, e.g. to compare both).

The backend is chosen once per process (current()). Both take the same input (a JSON
document of commands, or one listing command in nft syntax), print the same JSON and fail
with the same messages; this module is the only place that reads those messages, and turns
them into typed errors: NftNotFound (ENOENT: a table, set or element that is not there),
NftExists (EEXIST: a key that is taken), NftUnavailable (nft cannot be run at all), NftError
(anything else).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

NFT = "nft"
TIMEOUT_S = 60
BACKEND_ENV = "CNM_NFT"


class NftError(Exception):
    """nft failed; str() carries its message."""


class NftNotFound(NftError):
    """A table, chain, set or element the command names does not exist (ENOENT)."""


class NftExists(NftError):
    """A key the command adds is taken (EEXIST)."""


class NftUnavailable(NftError):
    """nft cannot be run here at all (no binary, the library fails): nothing of ours exists."""


class NftNotFoundAndExists(NftNotFound, NftExists):
    """A transaction reports every command that failed: one may miss an object, another
    find a key taken."""


_NOT_FOUND = ("No such file or directory", "does not exist")
_EXISTS = "File exists"


def error(message: str) -> NftError:
    """The typed error for nft's `message`."""
    missing = any(text in message for text in _NOT_FOUND)
    taken = _EXISTS in message
    kind = {(True, True): NftNotFoundAndExists, (True, False): NftNotFound,
            (False, True): NftExists}.get((missing, taken), NftError)
    return kind(message)


class Backend:
    """One way of running nft. `run` applies a JSON document of commands as one
    transaction; `query` runs one nft-syntax listing command and returns its JSON; `probe`
    runs one for its outcome only (`get element` does not print JSON)."""

    name = ""

    def run(self, commands: list[dict]) -> None:
        self._call(json.dumps({"nftables": commands}).encode(), None)

    def query(self, command: str) -> list[dict]:
        out = self._call(None, command)
        try:
            return json.loads(out or b"{}").get("nftables", [])
        except ValueError as exc:
            raise NftError(f"nft printed invalid JSON: {exc}") from None

    def probe(self, command: str) -> None:
        self._call(None, command)

    def problem(self) -> str | None:
        """Why nftables cannot be programmed through this backend; None when it can."""
        raise NotImplementedError

    def _call(self, document: bytes | None, command: str | None) -> bytes:
        raise NotImplementedError


class Library(Backend):
    """libnftables in process (libnftables.py)."""

    name = "libnftables"

    def problem(self) -> str | None:
        return None  # loaded (current() picks this backend only then)

    def _call(self, document: bytes | None, command: str | None) -> bytes:
        from . import libnftables

        try:
            outcome = libnftables.run(document if document is not None else command.encode())
        except OSError as exc:
            raise NftUnavailable(f"cannot run libnftables: {exc}") from None
        return _outcome(outcome)


class Binary(Backend):
    """The `nft` binary on PATH, one exec per call."""

    name = "exec"

    def problem(self) -> str | None:
        if shutil.which(NFT) is None:
            return f"{NFT} not found on PATH (and libnftables is not in use)"
        return None

    def _call(self, document: bytes | None, command: str | None) -> bytes:
        argv = [NFT, "-j", "-f", "-"] if document is not None else [NFT, "-j", *command.split()]
        try:
            proc = subprocess.run(argv, input=document, capture_output=True, timeout=TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NftUnavailable(f"cannot run nft: {exc}") from None
        return _outcome(proc)


def _outcome(proc) -> bytes:
    """What nft printed, or its typed error."""
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip()
        raise error(" ".join(text.split())[:500] or f"nft exited with {proc.returncode}")
    return proc.stdout


_current: Backend | None = None


def current() -> Backend:
    """This process's backend: libnftables when the node has it (unless CNM_NFT=exec),
    else the nft binary. Chosen at the first call."""
    global _current
    if _current is None:
        _current = _choose(os.environ.get(BACKEND_ENV))
    return _current


def choose(name: str | None) -> Backend:
    """Choose again: "exec" (the binary), "libnftables" (when the node has it, else the
    binary), None (as current() would at start). For comparing both (tests, bench)."""
    global _current
    _current = _choose(name)
    return _current


def _choose(name: str | None) -> Backend:
    if name != "exec":
        from . import libnftables

        if libnftables.library() is not None:
            return Library()
    return Binary()
