"""Moved to support/ports.py; import from there (this module stays for tests not yet moved over)."""

from support.ports import *  # noqa: F401,F403
