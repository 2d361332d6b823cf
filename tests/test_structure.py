"""Rules of the package's structure (issue 16), checked over its source: no module imports
another module's private names, and no import cycle, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sflow_app"
INTEGRATIONS = ROOT / "integrations"  # shipped as sflow_app.integrations


def modules() -> dict[str, Path]:
    """Dotted name -> source file, for sflow_app and its integrations."""
    found = {}
    for base, prefix in ((PACKAGE, ["sflow_app"]), (INTEGRATIONS, ["sflow_app", "integrations"])):
        for path in sorted(base.rglob("*.py")):
            parts = [*prefix, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """(module imported from, name imported, line) for every ``from ... import`` of the
    package, anywhere in the file (type-only and function-level imports included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "sflow_app" or module.startswith("sflow_app."):
                out += [(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [
                (alias.name, "", node.lineno)
                for alias in node.names
                if alias.name.startswith("sflow_app")
            ]
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    """``from .x import _name`` copies a binding of the moment and hides a dependency:
    what modules share has a plain name (private modules themselves may be imported)."""
    mods = modules()
    found = [
        f"{path.relative_to(ROOT)}:{line}: from {module} import {imported}"
        for name, path in mods.items()
        for module, imported, line in imports(name, path)
        if imported.startswith("_") and f"{module}.{imported}" not in mods
    ]
    assert found == []


def test_the_rule_sees_a_private_import(tmp_path: Path) -> None:
    """The check itself can fail."""
    path = tmp_path / "mod.py"
    path.write_text("from ._counters import _hidden\nfrom . import _counters\n")
    assert imports("sflow_app.mod", path) == [
        ("sflow_app._counters", "_hidden", 1),
        ("sflow_app", "_counters", 2),
    ]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a name imported from a package
    counts as its submodule when there is one, else as the package)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        for module, imported, _ in imports(name, path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in mods else module
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_not_even_for_types() -> None:
    """Each part names what it needs of another as a Protocol beside it (the exporter's
    ``Host``, a data source's ``Host``, the agent's capture ``Sink``), so no module imports
    one that imports it back -- lazily, or only while type checking, included."""
    assert cycles(import_graph()) == []


def test_the_cycle_check_can_fail() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_design_doc_names_every_module() -> None:
    """docs/design.md's module map has a line for each module, and no stale one."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    named = {
        cell.strip("`")
        for line in table.splitlines()
        if line.startswith("| `")
        for cell in [line.split("|")[1].strip()]
    }
    files = {str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))}
    assert sorted(files - named) == [], "modules missing from docs/design.md"
    stale = {n for n in named if n.startswith("sflow_app/") and n not in files}
    assert sorted(stale) == [], "docs/design.md names modules that do not exist"
