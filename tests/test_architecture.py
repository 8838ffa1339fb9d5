"""docs/architecture.md tells a newcomer where each behaviour lives: every symbol its table
names is defined in the file named beside it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def defined(path: Path) -> set[str]:
    """The names a module defines at its top level (functions, classes, constants), and its
    classes' methods as `Class.method`."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef))
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_behaviour_in_the_map_is_where_the_map_says():
    rows = re.findall(r"^\| [^|]+ \| `([\w/]+\.py)` \| (.+?) \|$",
                      (ROOT / "docs" / "architecture.md").read_text(), re.M)
    assert len(rows) >= 30
    for path, symbols in rows:
        names = defined(ROOT / path)
        for symbol in re.findall(r"`([\w.]+)`", symbols):
            assert symbol in names, f"docs/architecture.md: {path} defines no {symbol}"
