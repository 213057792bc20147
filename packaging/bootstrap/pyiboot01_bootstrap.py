"""The bundle's bootstrap script (in place of PyInstaller's; packaging/bootstrap/README.md).

PyInstaller's also installs the PYZ importer and the ctypes hook (nothing to do here), imports
encodings (the interpreter has) and os (~1 ms the thin path never needs), drops VIRTUAL_ENV
from the environment (a plugin forwards the runtime's environment as it came) and lists the
bundle directory for eggs (there are none).
"""
import sys

sys.frozen = True
