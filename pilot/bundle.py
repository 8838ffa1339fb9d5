"""Build pilot.pyz: the pilot as one file that any python3 (3.9 or newer) runs with no install.

The zip holds the modules of pilot/ and config/ that the pilot imports (found by following its
imports from pilot/main.py, so nothing else of the project rides along), a `__main__` that calls
`pilot.main.main`, and NVIDIA's pure-ctypes `pynvml.py` when the build environment has the
nvidia-ml-py distribution, so that nodes with a driver but no pynvml still report their GPUs.
Entries have fixed dates, so the same sources give the same bytes.
"""

from __future__ import annotations

import ast
import os
import stat
import zipfile
from importlib import metadata
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("pilot", "config")
ENTRY = "pilot/main.py"
MAIN = "import sys\n\nfrom pilot.main import main\n\nsys.exit(main())\n"
SHEBANG = b"#!/usr/bin/env python3\n"
_DATE = (1980, 1, 1, 0, 0, 0)


def pilot_modules(project: Path = PROJECT) -> list[str]:
    """The project files the pilot imports, as paths relative to `project`, sorted."""
    found: set[str] = set()
    pending = [ENTRY]
    while pending:
        relative = pending.pop()
        if relative in found:
            continue
        found.add(relative)
        package_init = str(Path(relative).parent / "__init__.py")
        if package_init != relative and (project / package_init).exists():
            pending.append(package_init)
        tree = ast.parse((project / relative).read_text(), relative)
        for node in ast.walk(tree):
            for name in _imported(node):
                path = _module_file(project, name)
                if path is not None:
                    pending.append(path)
    return sorted(found)


def _imported(node: ast.AST) -> list[str]:
    """The dotted names an import statement may load: `from config import dataset` can load
    config/dataset.py as well as config/__init__.py."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _module_file(project: Path, name: str) -> str | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (project / candidate).is_file():
            return candidate
    return None


def pynvml_file() -> Path | None:
    """NVIDIA's pynvml.py from the installed nvidia-ml-py distribution, if there is one."""
    try:
        distribution = metadata.distribution("nvidia-ml-py")
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file("pynvml.py")))
    return path if path.is_file() else None


def build(output_path: str | Path) -> Path:
    """Write pilot.pyz at `output_path` (made executable) and return its path."""
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    entries = [(name, (PROJECT / name).read_bytes()) for name in pilot_modules()]
    nvml = pynvml_file()
    if nvml is not None:
        entries.append(("pynvml.py", nvml.read_bytes()))
    entries.append(("__main__.py", MAIN.encode()))
    partial = output.with_name(output.name + ".part")
    with open(partial, "wb") as handle:
        handle.write(SHEBANG)
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
    os.replace(partial, output)
    output.chmod(output.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return output
