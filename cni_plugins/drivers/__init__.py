"""CNM drivers, one module per mode behind the Driver protocol in base.py.

A driver knows no other driver, and never the controller or the CLI.
"""

# plugin type -> "module:class"; imported only when a command needs the driver.
DRIVERS = {
    "null": "cni_plugins.drivers.null:NullDriver",
    "host": "cni_plugins.drivers.host:HostDriver",
    "bridge": "cni_plugins.drivers.bridge:BridgeDriver",
    "container": "cni_plugins.drivers.container:ContainerDriver",
}


def load(name: str):
    import importlib

    module, _, cls = DRIVERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
