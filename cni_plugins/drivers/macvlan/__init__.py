"""cnm-macvlan: containers on the master interface's layer 2, each with its own MAC."""

from .driver import MacvlanDriver

__all__ = ["MacvlanDriver"]
