"""What the runner raises. Messages follow libcni's wording, so logs read the same."""

from __future__ import annotations

from ..cni.errors import CNIError


class RunnerError(Exception):
    """Any failure of a runner operation (config, lookup, plugin, cache)."""


class ConfigError(RunnerError):
    """A network configuration file or list that cannot be used."""


class NotFoundError(ConfigError):
    """No configuration with that network name in the directory."""

    def __init__(self, directory: str, name: str):
        super().__init__(f'no net configuration with name "{name}" in {directory}')
        self.directory = directory
        self.name = name


class PluginError(RunnerError):
    """A plugin answered with an error object (or failed without one).

    `error` is the plugin's CNIError (code/msg/details as printed); `context` says
    which plugin of the list and which command, like libcni's wrapping.
    """

    def __init__(self, error: CNIError, context: str = ""):
        self.error = error
        self.context = context
        text = error.msg + (f"; {error.details}" if error.details else "")
        super().__init__(f"{context}: {text}" if context else text)

    @property
    def code(self) -> int:
        return self.error.code

    def wrapped(self, context: str) -> "PluginError":
        return PluginError(self.error, f"{context}: {self.context}" if self.context else context)
