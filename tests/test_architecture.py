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


# Who may import whom (ARCHITECTURE.md): the subpackages of floe each may import itself, the
# `floe` package (the namespace, with the version), and these; cli/ may import everything.
MAY_IMPORT = {
    "config": set(),
    "matchmaker": {"config"},
    "pilot": {"config"},
    "plugins": {"config"},
    "factory": {"config", "plugins"},
}
OURS = {"config", "matchmaker", "pilot", "plugins", "factory", "cli"}


def imported_modules(path: Path) -> list[str]:
    """The absolute module names a file imports, at its top or inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_each_package_imports_only_what_the_architecture_allows():
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] != "floe" or len(parts) == 1:
                    continue
                assert parts[1] in allowed | {package}, \
                    f"{path.relative_to(ROOT)} imports {name}: {package}/ may import " \
                    f"{', '.join(sorted(allowed)) or 'nothing of floe'}"


def test_everything_imports_our_packages_through_floe():
    """An installed floe has only `floe` in site-packages: `import config` would find another
    distribution's config (or none), never ours."""
    folders = [p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")
               and p.name not in {"build", "dist", "var", "test-artifacts"}]
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        bare = [name for name in imported_modules(path) if name.split(".")[0] in OURS]
        assert not bare, f"{path.relative_to(ROOT)} imports {bare}: import floe.{bare[0]}"
