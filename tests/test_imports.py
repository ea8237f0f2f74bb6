"""The packages read in import order: no import cycle in ``mediator/`` or ``matching/``, and no import of
one of their modules placed inside a function (the usual way to hide a cycle). Read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("mediator", "matching")


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the packages (a package is its ``__init__.py``)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules of the packages that an import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            is_package = MODULES[module].name == "__init__.py"
            parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            base = ".".join([*parent, base] if base else parent)
        # ``from package import name``: the submodule when there is one, else the package itself
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:  # ``import a.b.c`` of a name that is not a module: its package
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """Module -> the modules it imports (anywhere: an import inside a function closes a cycle too, only
    later), and the imports of package modules found inside functions (as ``file:line``)."""
    graph: dict[str, set[str]] = {}
    inside: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = set()
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        in_functions = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            targets = _imported(module, node)
            if id(node) in in_functions:
                inside += [f"{path.relative_to(REPO)}:{node.lineno} imports {t}" for t in targets]
            graph[module].update(t for t in targets if t != module)
    return graph, inside


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected set of modules (Tarjan), as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            members = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.add(member)
                if member == module:
                    break
            if len(members) > 1:
                found.append(_path_within(graph, members, module))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def _path_within(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself through ``members`` (breadth first)."""
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for other in sorted(graph[path[-1]] & members):
            if other == start:
                return [*path, start]
            if other not in path:
                paths.append([*path, other])
    raise AssertionError("a strongly connected set has a cycle")


def test_the_reader_sees_the_imports_it_checks():
    graph, _ = _imports()
    assert "mediator.admin" in graph["mediator.app"]
    assert "matching.rules" in graph["matching"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    graph, _ = _imports()
    assert _cycles(graph) == []


def test_no_package_module_imported_inside_a_function():
    _, inside = _imports()
    assert inside == []
