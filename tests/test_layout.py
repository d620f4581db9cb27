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


def test_the_middlewares_import_nothing_of_the_rollout_or_the_migration() -> None:
    """The per-request work of the rollout and the migration is the old-path accounting's
    (gateway/http/old_path.py); the middlewares stay the HTTP edge's own."""
    graph, _ = _graph()
    reached = sorted(
        m for m in graph["gateway.http.middleware"] if m.startswith(("gateway.rollout", "gateway.migration"))
    )
    assert reached == [], f"gateway/http/middleware.py imports {reached}"


def test_the_cohort_is_defined_once() -> None:
    """One Cohort, one classifier, one text form: gateway/cohorts.py's."""
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if path == ROOT / "gateway" / "cohorts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in ("Cohort", "ClientTable", "Platforms", "Selector"):
                found.append(f"{path.relative_to(ROOT)}: class {node.name}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ("cohort_of", "classify"):
                found.append(f"{path.relative_to(ROOT)}: def {node.name}")
    assert found == []


def test_no_module_of_the_package_is_over_500_lines() -> None:
    # A room that long holds several concerns (issue 18 carved config, the Redis store and the
    # guardrails on their seams): carve the next one before it gets there.
    modules = sorted((ROOT / "gateway").rglob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 500}
    assert modules and long == {}
