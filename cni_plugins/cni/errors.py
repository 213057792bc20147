"""CNI error objects."""

from __future__ import annotations

import json

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Ours (100 and up).
PLUGIN_FAILURE = 100  # a kernel or filesystem operation failed
IPAM_FAILURE = 101  # addresses exhausted, duplicate allocation, requested IP taken
CONFLICT = 102  # the request conflicts with existing state (port taken, netns mismatch)
CHECK_FAILED = 103  # CHECK found a difference between expectation and the kernel
CANNOT_RUN = 104  # something of the node's is missing or does not load (a dependency, a library): retry will not help
INTERNAL = 199  # a bug: an unexpected exception, reported without a traceback


class CNIError(Exception):
    """An error that is printed as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, version: str) -> dict:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}

    def to_json(self, version: str) -> bytes:
        return json.dumps(self.to_dict(version)).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: dict) -> "CNIError":
        """An error object printed by a delegated plugin, passed through unchanged."""
        return cls(int(data.get("code") or PLUGIN_FAILURE), str(data.get("msg", "")), str(data.get("details", "")))

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
