"""Build pilot.pyz: the pilot as one file that any python3 (3.9 or newer) runs with no install.

The zip holds the modules of floe.pilot and floe.config that the pilot imports (found by
following its imports from floe/pilot/main.py, so nothing else of the project rides along), as
floe/pilot/... and floe/config/... beside floe/__init__.py, the same tree as an installed floe;
a `__main__` that calls `floe.pilot.main.main`; and NVIDIA's pure-ctypes `pynvml.py` when the
build environment has the nvidia-ml-py distribution, so that nodes with a driver but no pynvml
still report their GPUs. Entries have fixed dates, so the same sources give the same bytes.
"""

from __future__ import annotations

import ast
import os
import stat
import zipfile
from importlib import metadata
from pathlib import Path

import floe

PROJECT = Path(__file__).resolve().parent.parent
"""Where the subpackages are: the checkout's root, or the installed floe package."""
PACKAGES = ("pilot", "config")
ENTRY = "floe/pilot/main.py"
MAIN = "import sys\n\nfrom floe.pilot.main import main\n\nsys.exit(main())\n"
SHEBANG = b"#!/usr/bin/env python3\n"
_DATE = (1980, 1, 1, 0, 0, 0)
_ROOT_INIT = "floe/__init__.py"


def pilot_modules() -> list[str]:
    """The files the pilot imports, named as in the bundle (floe/pilot/main.py, ...), sorted."""
    found: set[str] = set()
    pending = [ENTRY]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        package = Path(name).parent
        while package != Path("."):  # every package above a module runs its __init__ first
            pending.append(str(package / "__init__.py"))
            package = package.parent
        tree = ast.parse(source_file(name).read_text(), name)
        for node in ast.walk(tree):
            for imported in _imported(node):
                path = _module_file(imported)
                if path is not None:
                    pending.append(path)
    return sorted(found)


def source_file(name: str) -> Path:
    """The file of the checkout or installation that a bundle entry is made from."""
    if name == _ROOT_INIT:
        return Path(floe.__file__)
    return PROJECT / Path(name).relative_to("floe")


def _imported(node: ast.AST) -> list[str]:
    """The dotted names an import statement may load: `from floe.config import dataset` can
    load floe/config/dataset.py as well as floe/config/__init__.py."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def _module_file(name: str) -> str | None:
    parts = name.split(".")
    if parts == ["floe"]:
        return _ROOT_INIT
    if parts[0] != "floe" or len(parts) < 2 or parts[1] not in PACKAGES:
        return None
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if source_file(candidate).is_file():
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
    entries = [(name, source_file(name).read_bytes()) for name in pilot_modules()]
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
