"""The floors: imports point down only (digestguard < integrations < tasks < flows), and no product module imports tests.

Every module of the four packages is parsed with ``ast`` (nothing is imported), and every import in it counts:
module level and inside functions, ``import x`` and ``from x import y``, relative ones resolved against the
module's package, and ``importlib.import_module("x")`` / ``__import__("x")`` with a literal name. ``tests/`` and
``bench/`` stand outside the floors: they may import anything, and nothing on a floor may import them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOORS = {"digestguard": 1, "integrations": 2, "tasks": 3, "flows": 4}
OUTSIDE = ("tests", "bench")


def _modules(root: Path) -> Iterator[Path]:
    for package in FLOORS:
        yield from sorted((root / package).rglob("*.py"))


def _imported(node: ast.AST, package: list[str]) -> Iterator[str]:
    """The absolute dotted names an AST node imports (none for a node that is not an import).

    ``package`` is the module's package as parts, where its relative imports start (tasks/rotate/plan.py: tasks, rotate).
    """
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = package[: len(package) - node.level + 1] if node.level else []
        module = ".".join([*base, *([node.module] if node.module else [])])
        # ``from .. import x`` climbing to the top names top-level packages in its aliases
        yield from (module,) if module else (alias.name for alias in node.names)
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            yield node.args[0].value


def layer_violations(root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every import under ``root`` that points up a floor or out to tests/bench."""
    out = []
    for path in _modules(root):
        rel = path.relative_to(root)
        floor_name = rel.parts[0]
        floor = FLOORS[floor_name]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for name in _imported(node, list(rel.parent.parts)):
                top = name.split(".")[0]
                where = f"{rel}:{node.lineno}"
                if top in OUTSIDE:
                    out.append(f"{where}: {floor_name} (floor {floor}) imports {name}, which is outside the product")
                elif FLOORS.get(top, 0) > floor:
                    out.append(f"{where}: {floor_name} (floor {floor}) imports {name} (floor {FLOORS[top]}): up a floor")
    return sorted(out)


def test_imports_point_down_only():
    violations = layer_violations()
    assert not violations, "imports against the floors:\n" + "\n".join(violations)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a planted upward import inside a function, and a relative one, are both found."""
    for package in FLOORS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "digestguard" / "bad.py").write_text(
        "import json\n\n\ndef f():\n    from tasks.detect import detect\n    return detect\n")
    (tmp_path / "integrations" / "worse.py").write_text("from tests.support import x\nimport importlib\n"
                                                        "m = importlib.import_module('flows.cli')\n")
    (tmp_path / "tasks" / "sub").mkdir()
    (tmp_path / "tasks" / "sub" / "__init__.py").write_text("")
    (tmp_path / "tasks" / "sub" / "rel.py").write_text("from ..x import y\nfrom ... import flows\n")
    found = layer_violations(tmp_path)
    assert any(v.startswith("digestguard/bad.py:5: ") and "tasks.detect" in v for v in found), found
    assert any(v.startswith("integrations/worse.py:1: ") and "outside the product" in v for v in found), found
    assert any(v.startswith("integrations/worse.py:3: ") and "flows.cli" in v for v in found), found
    assert not any(v.startswith("tasks/sub/rel.py:1: ") for v in found), found  # tasks.x: same floor
    assert any(v.startswith("tasks/sub/rel.py:2: ") and "imports flows (floor 4)" in v for v in found), found
    assert len(found) == 4, found
