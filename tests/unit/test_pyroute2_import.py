"""cni_plugins.linux registers pyroute2 without running its package __init__ (cheaper
one-shot execs), yet `from pyroute2 import X` still works for anyone in the process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.common import ROOT


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_our_imports_skip_the_package_init():
    proc = run("import sys, cni_plugins.linux.links, cni_plugins.linux.addr, cni_plugins.linux.veth; "
               "print('pyroute2.ndb.main' in sys.modules, 'pyroute2.conntrack' in sys.modules, "
               "'pyroute2.iproute.linux' in sys.modules, 'pyroute2.netlink.rtnl.ifinfmsg' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    # IPRoute itself is imported only when Rtnl.iproute is first asked for (linux/rtnl.py)
    assert proc.stdout.split() == ["False", "False", "False", "True"]


@pytest.mark.parametrize("code", [
    "import cni_plugins.linux.links; from pyroute2 import IPRoute, NDB; print(IPRoute.__name__, NDB.__name__)",
    "import cni_plugins.linux; import pyroute2; print(pyroute2.IPRoute.__name__, pyroute2.NDB.__name__)",
])
def test_the_package_names_load_on_demand(code):
    proc = run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["IPRoute", "NDB"]


def test_a_missing_name_is_still_an_import_error():
    proc = run("import cni_plugins.linux\ntry:\n    from pyroute2 import NoSuchThing\nexcept ImportError as e:\n"
               "    print('ImportError')")
    assert proc.stdout.strip() == "ImportError", proc.stderr
