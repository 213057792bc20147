"""Drivers keep no state between calls (issue 22 item 1): a driver instance may serve many
requests, so what a command computes lives in locals, in ctx.plan or in endpoint.data, never
on self. Read from the source (AST): no method of a Driver subclass assigns to self."""

from __future__ import annotations

import ast
import os

DRIVERS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "cni_plugins", "drivers")


def _driver_classes(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(b, ast.Name) and b.id == "Driver") or (isinstance(b, ast.Attribute) and b.attr == "Driver")
                for b in node.bases):
            yield node


def _self_assignments(cls: ast.ClassDef) -> list[str]:
    found = []
    for node in ast.walk(cls):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    found.append(f"{cls.name}: self.{sub.attr} (line {sub.lineno})")
    return found


def scan(root: str = DRIVERS) -> tuple[list[str], list[str]]:
    """(driver classes found, assignments to self in their methods)."""
    classes, found = [], []
    for directory, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(directory, name)) as f:
                    tree = ast.parse(f.read())
                for cls in _driver_classes(tree):
                    classes.append(cls.name)
                    found += _self_assignments(cls)
    return classes, found


def test_no_driver_keeps_state_on_self():
    classes, found = scan()
    assert "BridgeDriver" in classes and "NullDriver" in classes  # the scan sees the drivers
    assert found == []


def test_the_scan_sees_an_assignment_to_self(tmp_path):
    (tmp_path / "d.py").write_text(
        "class D(Driver):\n"
        "    def __init__(self):\n"
        "        self._cached = None\n"
        "    def plan(self, ctx):\n"
        "        self.count += 1\n"
    )
    classes, found = scan(str(tmp_path))
    assert classes == ["D"]
    assert [f.split(" (")[0] for f in found] == ["D: self._cached", "D: self.count"]
