"""The package's layers, read from its imports: each layer imports only itself and the layers below.

domain (pure models and rules) < adapters (Rucio, Butler, workflow systems, local files and
processes) < phases < views < run (chain, run folders, secrets) < cli. The embedded world
(``multisite_nb.world``) is a deployment beside the library: it uses domain and adapters, and
only the CLI imports it. Every import counts, at module level or inside a function, under
``TYPE_CHECKING`` or not, and no two modules import each other through any path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from multisite_nb.domain.params import repo_root

PACKAGE = repo_root() / "multisite_nb"
LAYERS = ["domain", "adapters", "phases", "views", "run", "cli"]
WORLD = "world"
#: What the world may import (it is deployed by the CLI and brings its own services up).
WORLD_MAY_USE = {"domain", "adapters", WORLD}


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module(p): p
        for p in PACKAGE.rglob("*.py")
        if "rucio_side" not in p.parts  # runs in Rucio's own venv
    }


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules ``path`` imports (a ``from pkg import sub`` names the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {name: _imports(path, name, set(_modules())) for name, path in _modules().items()}


def test_every_module_is_in_a_layer() -> None:
    outside = [m for m in GRAPH if m != "multisite_nb" and _layer(m) not in [*LAYERS, WORLD]]
    assert not outside, f"modules outside the layers {LAYERS} and the world: {outside}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    layer = _layer(module)
    if layer is None:
        return
    wrong = []
    for target in GRAPH[module]:
        other = _layer(target)
        if other is None:
            continue
        if layer == WORLD:
            ok = other in WORLD_MAY_USE
        elif other == WORLD:
            ok = layer == "cli"
        else:
            ok = LAYERS.index(other) <= LAYERS.index(layer)
        if not ok:
            wrong.append(target)
    assert not wrong, f"{module} ({layer}) imports a layer above it: {sorted(wrong)}"


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components over the whole import graph: none larger than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The reader finds imports inside functions and relative ones (the checks above can fail)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ..views import status\n    import multisite_nb.cli\n")
    known = {"multisite_nb.views", "multisite_nb.views.status", "multisite_nb.cli", "multisite_nb.domain.m"}
    found = _imports(src, "multisite_nb.domain.m", known)
    assert found == {"multisite_nb.views.status", "multisite_nb.cli"}
