"""The import graph of cni_plugins, read from the source (issue 22 item 5): no cycle between
its modules and no import that points up the floors.

Every import statement counts, at module level and inside functions (the lazy ones too).
`from pkg import name` is an edge to the module pkg.name when there is one, else to pkg.
Importing a.b.c also runs a/__init__ and a/b/__init__; those implicit edges are not
counted (every module would then be in a cycle with its package).

Module paths named as strings for importlib (the plugin and driver registries, the
multi-call names in cli/thin.py, cnmd's preload) must not point up the floors either, but
do not count for cycles: such a registry loads the module it names on demand, after
itself is loaded. (thin.main names cnmd, which uses thin's wire protocol.)
"""

from __future__ import annotations

import ast
import os
import re

PACKAGE = "cni_plugins"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), PACKAGE)

# Floors, top (0) to bottom: a module may import its own floor or a lower one. Keyed by the
# first component under cni_plugins (a package or a top-level module).
FLOORS = {
    # the executables: plugin entry point, cnmd, cnmctl
    "cli": 0,
    # one CNI command end to end over the CNM model
    "controller": 1,
    # what the controller composes; they know the protocol, the store and the kernel
    "drivers": 2,
    "ipam": 2,
    "runtime": 2,
    "reconcile": 2,
    "lifecycle": 2,  # endpoint teardown and sandbox records: imports drivers and node
    "node": 2,  # the node's state dir, store and locks, opened once: imports cni and cnm
    "liveness": 2,  # which sandboxes still have users: imports cnm and linux
    # the protocol, the model and store, the kernel adapters
    "cni": 3,
    "cnm": 3,
    "linux": 3,
    "faults": 3,  # the test-only crash hook: a leaf (stdlib only), so anything may import it
    "": 3,  # cni_plugins/__init__.py: the version string
}

MODULE_STRING = re.compile(rf"^{PACKAGE}(\.\w+)+(:\w+)?$")


def module_names(root: str = ROOT) -> dict[str, str]:
    """Dotted module name -> file, for every .py under the package."""
    modules = {}
    base = os.path.dirname(root)
    for directory, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, base)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: str, modules: dict[str, str], strings: bool = False) -> set[str]:
    """The modules of the package that `module` imports anywhere in its source (`strings`:
    and those it names for importlib)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_package = os.path.basename(path) == "__init__.py"
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # `import a.b.attr`-like paths: the module part
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                assert keep > 0, f"{path}:{node.lineno}: relative import beyond the package"
                source = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source)
        elif strings and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and MODULE_STRING.match(node.value):
            add(node.value.partition(":")[0])
    found.discard(module)
    return found


def import_graph(root: str = ROOT, strings: bool = False) -> dict[str, set[str]]:
    modules = module_names(root)
    return {module: imports_of(module, path, modules, strings) for module, path in sorted(modules.items())}


def floor_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], set[str]]]:
    """Each strongly connected component of more than one module (Tarjan): one of its cycles,
    as a path that closes on itself, and all its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [(cycle_in(graph, component), component) for component in components]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                return paths[node] + [start]
            if target not in paths:
                paths[target] = paths[node] + [target]
                queue.append(target)
    raise AssertionError(f"no cycle in component {sorted(component)}")


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} (floor {FLOORS[floor_key(source)]}) imports {target} (floor {FLOORS[floor_key(target)]})"
        for source, targets in graph.items()
        for target in sorted(targets)
        if FLOORS[floor_key(target)] < FLOORS[floor_key(source)]
    ]


# ---- the rules, on the source ------------------------------------------------------------
def test_every_module_has_a_floor():
    unplaced = sorted({floor_key(m) for m in import_graph()} - set(FLOORS))
    assert not unplaced, f"give these a floor in FLOORS (tests/unit/test_import_graph.py): {unplaced}"


def test_no_import_points_up_the_floors():
    upward = upward_edges(import_graph(strings=True))
    assert not upward, "imports that point up the floors cli > controller > drivers/ipam/runtime/reconcile " \
                       "> cni/cnm/linux:\n" + "\n".join(upward)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (move what both sides need into a module below them):\n" + "\n".join(
        f"{' -> '.join(cycle)}  (all of {', '.join(sorted(members))})" for cycle, members in found)


def test_the_faults_hook_is_a_leaf():
    """Anything may import the test-only crash hook, so it imports nothing of ours."""
    assert import_graph()[f"{PACKAGE}.faults"] == set()


# ---- the scanner itself, on a package made for it ----------------------------------------
def test_the_scanner_sees_every_kind_of_import(tmp_path):
    """Imports at module level and inside functions, relative and absolute, `from . import
    submodule` and importlib strings, each resolved to the module it loads."""
    files = {
        "__init__.py": "",
        "cli/__init__.py": "",
        "cli/a.py": "from ..cni import b\nfrom ..cni.b import thing\n",
        "cli/z.py": "def f():\n    import cni_plugins.cni.b\n    from . import a\n",
        "cni/__init__.py": "LOADERS = {'x': 'cni_plugins.cli.z:main'}\n",
        "cni/b.py": "def g():\n    from .. import cni\n    from ..cli.a import h\n",
    }
    root = tmp_path / PACKAGE
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(str(root), strings=True)
    assert graph == {
        PACKAGE: set(),
        f"{PACKAGE}.cli": set(),
        f"{PACKAGE}.cli.a": {f"{PACKAGE}.cni.b"},
        f"{PACKAGE}.cli.z": {f"{PACKAGE}.cni.b", f"{PACKAGE}.cli.a"},
        f"{PACKAGE}.cni": {f"{PACKAGE}.cli.z"},
        f"{PACKAGE}.cni.b": {f"{PACKAGE}.cni", f"{PACKAGE}.cli.a"},
    }
    assert [cycle for cycle, _ in cycles(graph)] == [[f"{PACKAGE}.cli.a", f"{PACKAGE}.cni.b", f"{PACKAGE}.cli.a"]]
    assert import_graph(str(root))[f"{PACKAGE}.cni"] == set()  # a string names a module: no cycle
    assert sorted(upward_edges(graph)) == [
        f"{PACKAGE}.cni (floor 3) imports {PACKAGE}.cli.z (floor 0)",
        f"{PACKAGE}.cni.b (floor 3) imports {PACKAGE}.cli.a (floor 0)",
    ]
