"""Stands in for PyInstaller's ctypes hook in the cnm-cni bundle (packaging/bootstrap/README.md).

PyInstaller's hook makes ctypes.CDLL look for a library in the bundle first, and to do so it
imports ctypes at every start: ~1.5 ms of each plugin exec's thin path, which never uses
ctypes. The bundle collects no library that ctypes loads by name (libc and the node's own
libnftables come from the system), so there is nothing to hook.
"""


def install():
    pass
