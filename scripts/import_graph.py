"""The gateway package's import graph, read from the source with `ast`: its levels, its cycles,
and which modules import `aiohttp.web`.

    python scripts/import_graph.py            # summary
    python scripts/import_graph.py --levels   # every module with its level

A module's level is 0 when it imports nothing of the package, else one more than the highest
level among what it imports. Imports under `if TYPE_CHECKING:` count too: they are still a
dependency a reader has to follow.
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "gateway"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> tuple[set[str], bool]:
    """The package's modules `path` imports, and whether it imports aiohttp.web."""
    found: set[str] = set()
    uses_web = False
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "aiohttp.web" or name.startswith("aiohttp.web."):
                uses_web = True
            if name in known:
                found.add(name)
    # A package's __init__ is not a dependency of the modules below it.
    me = module_name(path)
    return {m for m in found if m != me and not me.startswith(m + ".")}, uses_web


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", action="store_true", help="list every module with its level")
    args = parser.parse_args()
    mods = modules()
    graph: dict[str, set[str]] = {}
    web_users: list[str] = []
    for name, path in mods.items():
        graph[name], uses_web = imports_of(path, set(mods))
        if uses_web:
            web_users.append(name)

    cycles: list[list[str]] = []

    @cache
    def level(name: str, stack: tuple[str, ...] = ()) -> int:
        if name in stack:
            cycles.append([*stack[stack.index(name) :], name])
            return 0
        return 1 + max((level(dep, (*stack, name)) for dep in graph[name]), default=-1)

    levels = {name: level(name) for name in graph}
    if args.levels:
        for name in sorted(levels, key=lambda n: (levels[n], n)):
            print(f"{levels[name]:3d}  {name}")
    print(f"modules: {len(graph)}")
    print(f"levels: {max(levels.values()) + 1}")
    print(f"cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " -> ".join(cycle))
    print("import aiohttp.web: " + ", ".join(sorted(web_users)))
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
