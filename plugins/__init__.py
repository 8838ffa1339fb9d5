"""Batch-system plugins: one module per system behind the small interface of `plugins.base`.

`create_plugin("slurm", settings)` gives the plugin a site config names; a system's module is
imported only when asked for, so that a site running SLURM never loads the HTCondor bindings.
"""

from __future__ import annotations

import importlib

from floe.plugins.base import (
    BatchError,
    BatchPlugin,
    PilotInfo,
    PilotShape,
    PilotState,
    PluginConfigError,
    PluginSettings,
)

# system name -> (module, class)
SYSTEMS = {
    "local": ("floe.plugins.local", "LocalPlugin"),
    "slurm": ("floe.plugins.slurm", "SlurmPlugin"),
    "sge": ("floe.plugins.sge", "SgePlugin"),
    "pbs": ("floe.plugins.pbs", "PbsPlugin"),
    "htcondor": ("floe.plugins.htcondor", "HTCondorPlugin"),
}


def create_plugin(system: str, settings: PluginSettings) -> BatchPlugin:
    """The plugin for batch system `system` (one of SYSTEMS) with these settings."""
    if system not in SYSTEMS:
        raise PluginConfigError(
            f"unknown batch system {system!r}; use one of: {', '.join(sorted(SYSTEMS))}")
    module, name = SYSTEMS[system]
    return getattr(importlib.import_module(module), name)(settings)


__all__ = [
    "SYSTEMS",
    "BatchError",
    "BatchPlugin",
    "PilotInfo",
    "PilotShape",
    "PilotState",
    "PluginConfigError",
    "PluginSettings",
    "create_plugin",
]
