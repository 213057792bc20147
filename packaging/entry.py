"""The bundle's single entry point (PyInstaller): one multi-call executable.

Plugin types (cnm-bridge, cnm-host, cnm-none, cnm-container, cnm-ipam, loopback),
cnmd and cnmctl are links to it; cli.thin.main dispatches on the name.
"""
import sys

from cni_plugins.cli.thin import main

sys.exit(main())
