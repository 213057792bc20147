"""Moved to support/bridge.py; import from there (this module stays for tests not yet moved over)."""

from support.bridge import *  # noqa: F401,F403
