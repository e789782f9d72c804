"""The package's shape: no import cycle among its modules, and no module too long to read.

Both checks read the source with ``ast`` (nothing is imported), so they cover
every module of ``src/ipc_server``, the Windows-only ones included.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "ipc_server"
ROOT = Path(__file__).resolve().parent.parent / "src" / PACKAGE
MAX_LINES = 700


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def parse(path: Path) -> ast.Module:
    """``ast.parse`` of ``path``, once more if CPython 3.11 raises its spurious
    ``SystemError: AST constructor recursion depth mismatch`` (python/cpython#106905;
    seen here once in many runs)."""
    source = path.read_text(encoding="utf-8")
    try:
        return ast.parse(source, str(path))
    except SystemError:
        return ast.parse(source, str(path))


def resolve(name: str) -> str | None:
    """The package module that ``import name`` runs last: ``name`` or its closest parent."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """``(module, line)`` for each import of a package module in ``path``, at any depth.

    Imports inside functions, classes and ``if TYPE_CHECKING:`` blocks count:
    a cycle hidden in a function is still a cycle of the design.
    """
    is_package = path.name == "__init__.py"
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # The package a relative import starts from: the module itself
                # for an __init__, its parent otherwise; one level up per dot.
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                # ``from . import x`` imports the module ``x`` when there is one,
                # a name of the package's ``__init__`` otherwise.
                sub = f"{name}.{alias.name}"
                target = sub if sub in MODULES else resolve(name)
                if target is not None:
                    yield target, node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of its first import}, within the package."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        for target, line in imported(module, path):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or not (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def shortest_cycle(graph: dict[str, dict[str, int]], group: list[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` within ``group``, as a closed path."""
    members = set(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node]):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def cycles(graph: dict[str, dict[str, int]], group: list[str]) -> list[list[str]]:
    """A shortest cycle through each module of ``group``, each cycle once."""
    found: list[list[str]] = []
    for start in group:
        cycle = shortest_cycle(graph, group, start)[:-1]
        first = cycle.index(min(cycle))
        cycle = cycle[first:] + cycle[:first]
        if cycle not in found:
            found.append(cycle)
    return [[*cycle, cycle[0]] for cycle in found]


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    """``a (line 3) -> b (line 9) -> a``: each step with the line of its import."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def test_layout_finds_the_modules() -> None:
    """The checks below see the package: its root, the command line, the entry point."""
    assert {PACKAGE, f"{PACKAGE}.__main__", f"{PACKAGE}.cli"} <= set(MODULES)


def test_no_import_cycle() -> None:
    """No module imports, directly or through others, a module that imports it."""
    graph = import_graph()
    found = [
        describe(graph, cycle)
        for group in strongly_connected(graph)
        for cycle in cycles(graph, group)
    ]
    assert not found, "import cycles:\n  " + "\n  ".join(found)


def test_modules_are_short() -> None:
    """Every module of the package has at most MAX_LINES lines."""
    long = {
        str(path.relative_to(ROOT.parent)): count
        for path in MODULES.values()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name} ({count})" for name, count in sorted(long.items())
    )


def defined_names(tree: ast.Module) -> set[str]:
    """Attribute names a module defines: methods, class attributes, slots, ``self.x = ...``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "__slots__" and node.value is not None:
                        names.update(
                            e.value
                            for e in ast.walk(node.value)
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        )
    return names


def private_reaches(path: Path) -> Iterator[str]:
    """``line: expression`` for each read of another module's ``_private`` attribute.

    ``self._x``, ``cls._x`` and ``super()._x`` are a class's own; ``obj._x``
    is allowed when this module defines ``_x`` (classes of one module may share
    what is private to that module). Anything else reaches into another
    module's internals.
    """
    tree = parse(path)
    own = defined_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in own:
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
            continue
        yield f"{node.lineno}: {ast.unparse(node)}"


def test_no_private_reaches() -> None:
    """No module reads another module's private attributes: each seam is a public method."""
    found = [f"{name}:{reach}" for name, path in MODULES.items() for reach in private_reaches(path)]
    assert not found, "reads of another module's private attributes:\n  " + "\n  ".join(found)
