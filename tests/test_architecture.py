"""The import rules of docs/architecture.md, read from the code: which part of the package may
import which, no cycle between parts, no cycle between modules at import time, and a command
line that parses and prints (it never assembles engine, data or models itself)."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "darkknowledge"


def allowed_imports() -> dict[str, set[str]]:
    """The table "What each part may import" of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## What each part may import", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            rules[cells[0].strip("`")] = set(re.findall(r"`([\w_]+)`", cells[1]))
    return rules


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == "darkknowledge":
            return [f"darkknowledge.{a.name}" for a in node.names]
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return []


def part_edges() -> dict[str, set[str]]:
    """part -> parts it imports (anywhere in its files, function-level imports included)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node):
                parts = name.split(".")
                if parts[0] == "darkknowledge" and len(parts) > 1:
                    target = (
                        parts[1]
                        if (PACKAGE / parts[1]).exists() or (PACKAGE / f"{parts[1]}.py").exists()
                        else "__init__"
                    )
                    if target != _part(path):
                        edges[_part(path)].add(target)
    return edges


def test_every_part_is_in_the_table_and_imports_only_what_it_may():
    rules = allowed_imports()
    parts = {_part(p) for p in PACKAGE.rglob("*.py")}
    assert parts - set(rules) == set(), "parts missing from docs/architecture.md"
    bad = {f"{a} -> {b}" for a, targets in part_edges().items() for b in targets if b not in rules[a]}
    assert not bad, sorted(bad)


def test_no_cycle_between_parts():
    edges = part_edges()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])


def test_no_import_cycle_between_modules_at_import_time():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:  # module level only: what runs at import
            for target in _imported(node):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(modules):
        if node not in state:
            visit(node, [])


def test_the_command_line_never_assembles_engine_data_or_models():
    for path in (PACKAGE / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node):
                assert not re.match(r"darkknowledge\.(engine|data|models)\b", name), f"{path.name} imports {name}"
