"""Where the `floe` commands keep a user's own files, as the XDG base directory specification
has it: settings under `$XDG_CONFIG_HOME/floe` (`~/.config/floe` where that is unset, empty or
not an absolute path, as the specification says to ignore it), and what may be thrown away and
made again under `$XDG_CACHE_HOME/floe` (`~/.cache/floe`)."""

from __future__ import annotations

import os
from pathlib import Path


def _base(variable: str, default: str) -> Path:
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home() / default


def config_dir() -> Path:
    """floe's settings folder: `$XDG_CONFIG_HOME/floe`, else `~/.config/floe`."""
    return _base("XDG_CONFIG_HOME", ".config") / "floe"


def cache_dir() -> Path:
    """floe's cache folder: `$XDG_CACHE_HOME/floe`, else `~/.cache/floe`."""
    return _base("XDG_CACHE_HOME", ".cache") / "floe"
