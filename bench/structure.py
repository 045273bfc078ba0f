"""The code's shape, as issue 15 measures it: `.venv/bin/python -m bench.structure [ROOT]`.

Prints the five largest modules and classes of realtime_llm/ (lines), the import cycles
between its modules (every import, deferred ones too; not those only for type checking),
and the `type: ignore` count. ROOT is a checkout (default: this one), so an older tree can
be measured the same way (a git worktree).
"""
from __future__ import annotations

import ast
import itertools
import pathlib
import sys


def modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, ast.Module]]:
    package = root / "realtime_llm"
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        found[name] = (path, ast.parse(path.read_text()))
    return found


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    type_only = {id(node) for test in ast.walk(tree) if isinstance(test, ast.If) and "TYPE_CHECKING" in ast.unparse(
        test.test) for statement in test.body for node in ast.walk(statement)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("realtime_llm"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main() -> None:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    found = modules(root)
    sizes = sorted(((len(path.read_text().splitlines()), name) for name, (path, _) in found.items()), reverse=True)
    classes = sorted(((node.end_lineno or node.lineno) - node.lineno + 1, f"{name}.{node.name}")
                     for name, (_, tree) in found.items() for node in ast.walk(tree) if isinstance(node, ast.ClassDef))
    graph = {name: imports(tree, set(found)) & set(found) for name, (_, tree) in found.items()}
    ignores = sum(path.read_text().count("type: ignore") for path, _ in found.values())
    print("largest modules:", ", ".join(f"{name} {lines}" for lines, name in sizes[:5]))
    print("largest classes:", ", ".join(f"{name} {lines}" for lines, name in classes[::-1][:5]))
    print("import cycles:", len(cycles(graph)), cycles(graph) or "")
    print("type: ignore:", ignores)


if __name__ == "__main__":
    main()
