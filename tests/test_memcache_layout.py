"""sflow_app.memcache as a package: its public names, and the rules that keep its state in
one owner (``_state.STATE``, changed only by ``bind()``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sflow_app" / "memcache"
MODULES = sorted(PACKAGE.glob("*.py"))
assert len(MODULES) > 1, PACKAGE


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def test_public_names_are_unchanged() -> None:
    import sflow_app.memcache as sfm

    assert sfm.__all__ == ["KeyMode", "instrument", "uninstrument", "wrap"]
    for name in ("instrument", "uninstrument", "wrap"):
        assert callable(getattr(sfm, name))
    assert sfm.__file__ is not None and Path(sfm.__file__).parent == PACKAGE


def test_no_module_imports_another_modules_underscore_names() -> None:
    """``from .x import _name`` would copy a private binding (and hide a dependency):
    shared names are plain names in the private modules."""
    found = []
    for path in MODULES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.module not in (None, "__future__"):
                found += [
                    f"{path.name}: from {'.' * node.level}{node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                ]
    assert found == []


def test_no_module_rebinds_globals() -> None:
    """The state lives in STATE's attributes; no ``global`` statement, no assignment to
    another module's attributes (``_module.name = ...``)."""
    modules = {path.stem for path in MODULES}
    found = []
    for path in MODULES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Global):
                found.append(f"{path.name}:{node.lineno}: global {', '.join(node.names)}")
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in modules
                ):
                    found.append(f"{path.name}:{node.lineno}: {target.value.id}.{target.attr} =")
    assert found == []


def test_the_package_has_no_import_cycle() -> None:
    """Between its own modules, type-only imports included."""
    edges: dict[str, set[str]] = {path.stem: set() for path in MODULES}
    for path in MODULES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    edges[path.stem].add(node.module)
                else:
                    edges[path.stem].update(alias.name for alias in node.names)
    for module in edges:
        edges[module] &= set(edges)

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, " -> ".join((*stack, module))
        for target in sorted(edges[module]):
            visit(target, (*stack, module))

    for module in sorted(edges):
        visit(module, ())
