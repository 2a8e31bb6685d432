"""The package map in docs/architecture.md holds: no two modules import each other (directly or
round a loop), and a package imports only from packages below it in the map's table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "offload_fsm"
DOC = ROOT / "docs" / "architecture.md"
# The documented exceptions: module -> the package above it that it may import.
UPWARD = {"offload_fsm.probe.select": "sim"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the offload_fsm modules it imports (anywhere in it, TYPE_CHECKING included)."""
    modules = {module_name(p): p for p in PKG.rglob("*.py")}

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("offload_fsm"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else resolve(str(node.module)))
            elif isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.startswith("offload_fsm")}
        graph[name] = targets - {name, "offload_fsm"}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def documented_order() -> list[str]:
    """Package names (``gates``, ``settings``, ...) top to bottom, from the map's table."""
    table = DOC.read_text().split("## The map", 1)[1]
    return re.findall(r"^\| `([a-z_]+)(?:/|\.py)` \|", table, re.M)


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_circles() -> None:
    assert cycle(import_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_every_package_is_on_the_map() -> None:
    order = documented_order()
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert packages | {"settings"} == set(order)


def test_packages_import_only_from_packages_below_them_on_the_map() -> None:
    rank = {name: i for i, name in enumerate(documented_order())}
    upward = []
    for module, targets in import_graph().items():
        src = package_of(module)
        if src not in rank:
            continue  # the package root and the modules the plain-core work removes
        for target in targets:
            dst = package_of(target)
            against = dst in rank and dst != src and rank[dst] < rank[src]
            if against and UPWARD.get(module) != dst:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports against the map in docs/architecture.md: {sorted(upward)}"
