"""Moved to support/bundle.py; import from there (this module stays for tests not yet moved over)."""

from support.bundle import *  # noqa: F401,F403
