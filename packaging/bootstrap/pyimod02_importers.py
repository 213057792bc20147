"""Stands in for PyInstaller's PYZ importer (packaging/bootstrap/README.md).

The bundle's modules are .pyc files under _internal/ (noarchive), which is on sys.path:
the interpreter's own FileFinder loads them, as in any installed Python.
"""


def install():
    pass
