"""Stands in for PyInstaller's PYZ reader (packaging/bootstrap/README.md): the bundle's PYZ is empty."""
