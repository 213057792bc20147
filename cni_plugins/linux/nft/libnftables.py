"""libnftables, in process: the library `nft` itself is a thin front end to.

Why not exec `nft`: a fork+exec of nft costs ~15 ms per call on a 2-vCPU node, several
times the rest of an ADD; the library does the same parse, the same single netlink
transaction and prints the same JSON and messages in well under a millisecond.

Why ctypes and not Debian's python3-nftables: that module is the same ctypes binding of
the same five functions, but it lives in the system Python's dist-packages, which neither
our venv nor the PyInstaller bundle (which must run without a system Python) can import.
The library is part of the nftables package every node that runs us already has.

A context is made per call: its netlink socket belongs to the network namespace of the
calling thread at that moment (the helper runs each request in the caller's netns).
libnftables keeps some process-wide state (interface cache, xtables), so calls are
serialised; the kernel serialises nftables transactions anyway.
"""

from __future__ import annotations

import ctypes
import threading

SONAME = "libnftables.so.1"
OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: JSON output, and JSON input is parsed as such

_lock = threading.Lock()
_lib = None
_loaded = False


class Outcome:
    """What one command did: nft's exit status and what it printed."""

    __slots__ = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def library():
    """The loaded libnftables, or None when this node does not have it."""
    global _lib, _loaded
    if _loaded:
        return _lib
    with _lock:
        if not _loaded:
            try:
                lib = ctypes.CDLL(SONAME, use_errno=True)
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
                _lib = lib
            except (OSError, AttributeError):
                _lib = None
            _loaded = True
    return _lib


def run(command: bytes) -> Outcome:
    """Run one nft command (JSON or nft syntax) as `nft -j -f -` would, JSON output."""
    lib = library()
    if lib is None:
        raise OSError(f"{SONAME} is not available")
    with _lock:
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        try:
            lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON)
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            rc = lib.nft_run_cmd_from_buffer(ctx, command)
            out = lib.nft_ctx_get_output_buffer(ctx) or b""
            err = lib.nft_ctx_get_error_buffer(ctx) or b""
        finally:
            lib.nft_ctx_free(ctx)
    return Outcome(1 if rc else 0, out, err)
