"""The layout keeps its shape: no import cycles, only the HTTP edge (and the app factory, the
command line and the simulated upstream, which serve it) imports aiohttp.web, and every package
says what it owns."""

from __future__ import annotations

import ast
import importlib.util
import sys

from tests.support import ROOT

_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
assert _spec is not None and _spec.loader is not None
graph_script = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = graph_script
_spec.loader.exec_module(graph_script)

WEB_ALLOWED = ("gateway.http", "gateway.app", "gateway.cli", "gateway.sandbox")


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = graph_script.modules()
    graph, web = {}, []
    for name, path in mods.items():
        graph[name], uses_web = graph_script.imports_of(path, set(mods))
        if uses_web:
            web.append(name)
    return graph, web


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        seen[name] = 1
        for dep in graph[name]:
            assert seen.get(dep) != 1, "import cycle: " + " -> ".join([*path, name, dep])
            if dep not in seen:
                visit(dep, [*path, name])
        seen[name] = 2

    for name in graph:
        if name not in seen:
            visit(name, [])


def test_only_the_http_edge_imports_aiohttp_web() -> None:
    _, web = _graph()
    below = [m for m in web if not any(m == a or m.startswith(a + ".") for a in WEB_ALLOWED)]
    assert below == [], f"modules below gateway/http/ import aiohttp.web: {below}"


def test_every_package_and_module_has_a_docstring() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        if path.name != "__main__.py" and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []
