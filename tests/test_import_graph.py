"""No import cycles in pam_core or the host packages, read statically from the source (nothing is imported).

Every import statement counts, also those inside functions and under `if TYPE_CHECKING`: a deferred import
hides a cycle from the interpreter but not from the reader. An import resolves to the most specific module of
ours it names (`from pam_core.video import X` -> `pam_core.video`, a package's `__init__`; `from . import tasks`
-> `pam_core.tasks`); imports of other libraries are left out.
"""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pam_core", "comfy_nodes", "fiftyone_plugin")

Edges = dict[str, dict[str, list[str]]]  # importer -> imported -> where ("path:line")


def module_files(root: Path, packages) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is its `__init__.py`)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path, tree: ast.AST):
    """(dotted name, line) for each name an import statement of the module may refer to, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:  # `from base import name`: name is a submodule or an attribute of base
                yield f"{base}.{alias.name}", node.lineno


def import_graph(root: Path, packages=PACKAGES) -> Edges:
    modules = module_files(root, packages)
    edges: Edges = defaultdict(lambda: defaultdict(list))
    for module, path in modules.items():
        for name, line in imported_names(module, path, ast.parse(path.read_text(encoding="utf-8"), str(path))):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            place = f"{path.relative_to(root)}:{line}"
            if name and place not in edges[module][name]:
                edges[module][name].append(place)
    for module in modules:
        edges[module]  # every module is a node, also one that imports nothing of ours
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components with more than one module, and modules that import themselves
    (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(component: list[str], edges: Edges) -> str:
    members = set(component)
    lines = [" <-> ".join(component) + ":"]
    for module in component:
        for target, places in sorted(edges[module].items()):
            if target in members:
                lines.append(f"    {module} -> {target}  ({', '.join(places)})")
    return "\n".join(lines)


def test_no_import_cycles():
    edges = import_graph(ROOT)
    assert "pam_core.model" in edges["pam_core.engine"], "the import graph misses a known import: the parser is broken"
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges) for c in found)


def test_the_graph_sees_deferred_relative_and_type_checking_imports(tmp_path):
    """The checker itself: cycles hidden in a function, under TYPE_CHECKING or in a package's __init__ are found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("A = 1\n\ndef f():\n    from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n")
    (package / "c.py").write_text("import pkg.d\n")
    (package / "d.py").write_text("from pkg import c\n")
    (package / "e.py").write_text("from . import e\n")
    (package / "f.py").write_text("from pkg import A\n")  # -> pkg (its __init__), which imports a, not f: no cycle
    edges = import_graph(tmp_path, ["pkg"])
    assert cycles(edges) == [["pkg.a", "pkg.sub.b"], ["pkg.c", "pkg.d"], ["pkg.e"]]
    assert "pkg.a -> pkg.sub.b  (pkg/a.py:4)" in describe(["pkg.a", "pkg.sub.b"], edges)
