"""The package's import graph: no cycles, and each layer imports only the layers below it.

Every ``import`` / ``from ... import`` statement of every ``videoapp`` module
counts, at module level and inside functions (a function-level import runs as
surely as a top-level one, only later), and so does
``importlib.import_module("videoapp...")`` with a constant name. Python runs a
package's ``__init__`` before any submodule; that implicit step is not an edge
(``videoapp.models`` importing its families and a family importing
``videoapp.models.registry`` is the registration pattern, not a cycle), but an
explicit ``from videoapp.models import x`` is an edge to the package unless
``x`` is a submodule.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "videoapp"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies in (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, known: dict[str, Path]) -> set[str]:
    """The videoapp modules that ``module`` imports anywhere in its source."""
    path = known[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub`; `from mod import name` imports `mod`.
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for t in targets:
            if t == "videoapp" or t.startswith("videoapp."):
                hit = _resolve(t, known)
                if hit is not None and hit != module:
                    out.add(hit)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {m: imports_of(m, known) for m in known}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = GREY
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == GREY:
                return stack[stack.index(n):] + [n]
            if colour[n] == WHITE and (found := visit(n)):
                return found
        stack.pop()
        colour[m] = BLACK
        return None

    for m in sorted(graph):
        if colour[m] == WHITE and (found := visit(m)):
            return found
    return None


def test_graph_parser_sees_function_level_and_relative_imports(tmp_path):
    # The checker itself: a cycle through a function-level import, a relative import and import_module.
    pkg = tmp_path / "videoapp"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from videoapp.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import importlib\nimportlib.import_module('videoapp.a')\n")
    known = {}
    for p in pkg.rglob("*.py"):
        parts = list(p.relative_to(tmp_path).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        known[".".join(parts)] = p
    g = {m: imports_of(m, known) for m in known}
    assert g["videoapp.a"] == {"videoapp.sub.b"}
    assert g["videoapp.sub.b"] == {"videoapp.sub.c"}
    assert g["videoapp.sub.c"] == {"videoapp.a"}
    assert _find_cycle(g) == ["videoapp.a", "videoapp.sub.b", "videoapp.sub.c", "videoapp.a"]


def test_no_import_cycle(graph):
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_pretrained_layer_is_where_the_issue_had_the_cycle(graph):
    # The edges that replaced registry <-> weights: file format at the bottom, registry on nothing.
    assert graph["videoapp.weights"] <= {"videoapp.files"}
    assert graph["videoapp.models.registry"] == set()
    assert {"videoapp.models.registry", "videoapp.weights"} <= graph["videoapp.models.pretrained"]
    assert "videoapp.models.pretrained" in graph["videoapp.models.factory"]
    # Converters are registered by the families, not looked up in them.
    for family in ("mvitv2", "hiera", "twins", "detector"):
        assert f"videoapp.models.{family}" not in graph["videoapp.models.pretrained"]
        assert "videoapp.models.factory" not in graph[f"videoapp.models.{family}"]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "videoapp"


# What each layer may import (besides itself). `labels` (class-name lists) is data, usable by all;
# `files` (atomic writes, one-line errors) and `hardware` (what the CPU computes natively) are the
# bottom layer, usable by all.
_BOTTOM = {"files", "hardware"}
ALLOWED = {
    "files": set(),
    "hardware": set(),
    "weights": _BOTTOM,
    "labels": set(),
    "config": _BOTTOM | {"labels"},
    "models": _BOTTOM | {"weights", "labels"},
    "data": _BOTTOM | {"labels", "config"},
    "store": _BOTTOM | {"labels", "data", "weights"},
    "engine": _BOTTOM | {"weights", "labels", "config", "models", "data", "store"},
    "cli": _BOTTOM | {"videoapp", "weights", "labels", "config", "models", "data", "store", "engine", "ui"},
    "ui": _BOTTOM | {"videoapp", "weights", "labels", "config", "models", "data", "store", "engine"},
}


def test_layer_order(graph):
    bad = []
    for module, deps in sorted(graph.items()):
        layer = _layer(module)
        if layer not in ALLOWED:
            continue  # the package itself and __main__: entry points
        for dep in sorted(deps):
            other = _layer(dep)
            if other != layer and other not in ALLOWED[layer]:
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports against the layer order: " + ", ".join(bad)
    # The named rules of the layering (DESIGN.md): spelled out so that a loosened table fails here.
    for module, deps in graph.items():
        layer = _layer(module)
        if layer == "models":
            assert not {_layer(d) for d in deps} & {"engine", "ui", "cli"}, module
        if layer == "data":
            assert not {_layer(d) for d in deps} & {"models", "engine", "ui", "cli"}, module
        if layer == "weights":
            assert deps <= {"videoapp.files", "videoapp.hardware"}, module
        if layer in _BOTTOM:  # the bottom layer: shared helpers that import no other videoapp module
            assert not deps, module


def test_converters_are_registered_by_the_module_that_defines_the_variant():
    # The detectors share their backbones' family names but read their own state dicts.
    from videoapp.models import detector, hiera, mvitv2, twins
    from videoapp.models.registry import get_converters

    for name, module in (("mvitv2_xxs_8x64", mvitv2), ("hiera_xxs_8x64", hiera), ("twins_svt_s_224", twins),
                         ("mvitv2_xxs_8x64_ava", detector)):
        found = get_converters(name)
        assert found.detect_source is module.detect_source, name
        assert dict(found.convert) == module.CONVERTERS, name
