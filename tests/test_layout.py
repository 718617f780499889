"""The house's rules, read from the code's own import statements (every level, functions included):
no module imports one that imports it back, rooms (packages, and the loose modules beside them) import one way,
and data_pipelines never imports mmllm. A failure names the cycle it found."""

from __future__ import annotations

import ast
from pathlib import Path

from commands import REPO

PACKAGES = ("mmllm", "data_pipelines")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def imported_modules(source: str, this: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules that module `this` imports: `import a.b`, `from a.b import c` (c a module or a name
    in a.b), relative imports resolved; a package's `__init__` is not an arrow of every import below it."""
    package = this if is_package else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` where c is a name, or a package's attribute
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(path.read_text(), name, path.name == "__init__.py", set(known))
            for name, path in known.items()}


def room_of(module: str, known: set[str]) -> str:
    """A package below the top level is a room; a module loose in mmllm/ or data_pipelines/ is its own."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    package = ".".join(parts[:2])
    return package if any(other.startswith(package + ".") for other in known) else module


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imported_modules_reads_imports_inside_functions_and_relative_ones():
    known = {"mmllm", "mmllm.config", "mmllm.model", "mmllm.model.lm", "mmllm.model.generation"}
    source = ("from mmllm import config\n"
              "def f():\n    from .generation import KVCache\n    import mmllm.model.lm\n    import torch\n")
    assert imported_modules(source, "mmllm.model.vlm", False, known) == {
        "mmllm.config", "mmllm.model.generation", "mmllm.model.lm"}


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_rooms_import_one_way():
    edges = graph()
    known = set(edges)
    rooms: dict[str, set[str]] = {}
    for module, targets in edges.items():
        if module in PACKAGES:  # the packages' own __init__ (mmllm.load, the moved-path aliases) sit above all
            continue
        room = room_of(module, known)
        rooms.setdefault(room, set()).update(
            room_of(target, known) for target in targets if target not in PACKAGES and room_of(target, known) != room
        )
    cycle = find_cycle(rooms)
    assert cycle is None, "rooms in a circle (an upward arrow): " + " -> ".join(cycle)


def test_data_pipelines_never_imports_mmllm():
    offenders = {module: sorted(t for t in targets if t.split(".")[0] == "mmllm")
                 for module, targets in graph().items() if module.split(".")[0] == "data_pipelines"}
    assert not {m: t for m, t in offenders.items() if t}


def test_the_language_model_needs_nothing_from_generation():
    assert "mmllm.model.generation" not in graph()["mmllm.model.lm"]
