"""CNM drivers, one module per mode behind the Driver protocol in base.py.

A driver knows no other driver, and never the controller or the CLI.
"""

# The one registry of plugin types: CNI type -> CNM driver name (stdlib only: the plugin
# entry point reads it before anything heavy is imported).
PLUGIN_TYPES = {
    "cnm-bridge": "bridge",
    "cnm-host": "host",
    "cnm-none": "null",
    "loopback": "null",  # cnm-none installed in containerd's loopback slot
    "cnm-container": "container",
    "cnm-overlay": "overlay",
    "cnm-macvlan": "macvlan",
}

# driver name -> "module:class"; imported only when a command needs the driver.
DRIVERS = {
    "null": "cni_plugins.drivers.null:NullDriver",
    "host": "cni_plugins.drivers.host:HostDriver",
    "bridge": "cni_plugins.drivers.bridge:BridgeDriver",
    "container": "cni_plugins.drivers.container:ContainerDriver",
    "overlay": "cni_plugins.drivers.overlay.driver:OverlayDriver",
    "macvlan": "cni_plugins.drivers.macvlan:MacvlanDriver",
}


def load(name: str):
    import importlib

    module, _, cls = DRIVERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
