"""Old pilot logs leave the factory's workdir: once an hour, after the site's
`keep_pilot_logs`, never those of a pilot still tracked; a failure is said and tried again."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from floe.factory.logs import EVERY, LogPruning
from floe.plugins.base import PluginSettings
from floe.plugins.local import LocalPlugin
from tests.pilot.live import LiveMatchmaker

from .conftest import site_document


def old_file(directory: Path, name: str, age: float = 2 * 86400) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("pilot: done\n")
    then = path.stat().st_mtime - age
    os.utime(path, (then, then))
    return path


def test_logs_are_pruned_once_an_hour_and_never_with_keep_zero(tmp_path: Path) -> None:
    plugin = LocalPlugin(PluginSettings(factory_id="f1", workdir=tmp_path))
    logs = Path(plugin.pilot_dir("logs"))
    first = old_file(logs, "floe-f1-small-aa.out")
    pruning = LogPruning("site-a")
    pruning.maybe(plugin, 0, [], 1000.0)
    assert first.exists()
    pruning.maybe(plugin, 86400, [], 1000.0)
    assert not first.exists() and pruning.removed == 1
    second = old_file(logs, "floe-f1-small-bb.out")
    pruning.maybe(plugin, 86400, [], 1000.0 + EVERY - 1)
    assert second.exists()
    pruning.maybe(plugin, 86400, [], 1000.0 + EVERY)
    assert not second.exists() and pruning.removed == 2


def test_a_pruning_that_fails_is_said_and_tried_again_an_hour_later(tmp_path: Path,
                                                                    caplog) -> None:
    plugin = LocalPlugin(PluginSettings(factory_id="f1", workdir=tmp_path))
    logs = Path(plugin.pilot_dir("logs"))
    logs.rmdir()
    logs.write_text("not a directory")
    pruning = LogPruning("site-a")
    with caplog.at_level(logging.WARNING, logger="floe.factory"):
        pruning.maybe(plugin, 86400, [], 1000.0)
    [said] = [r.getMessage() for r in caplog.records]
    assert said == (f"site site-a: cannot remove pilot logs older than 1d from {logs} (tried "
                    f"again in an hour): cannot use {logs}: File exists")
    logs.unlink()
    stale = old_file(logs, "floe-f1-small-cc.out")
    pruning.maybe(plugin, 86400, [], 1000.0 + 60)
    assert stale.exists()
    pruning.maybe(plugin, 86400, [], 1000.0 + EVERY)
    assert not stale.exists()


def test_a_factory_cycle_removes_the_logs_older_than_keep_pilot_logs(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog) -> None:
    site = make_runner(site_document(matchmaker, tmp_path / "factory", keep_pilot_logs="1d"))
    logs = Path(site.plugin.pilot_dir("logs"))
    gone = old_file(logs, f"floe-{site.config.factory_id}-small-0a1b.out")
    kept = old_file(logs, f"floe-{site.config.factory_id}-small-2c3d.out", age=3600)
    with caplog.at_level(logging.INFO, logger="floe.factory"):
        site.cycle()
    assert not gone.exists() and kept.exists()
    assert f"site site-a: removed 1 pilot log file last written more than 1d ago from " \
           f"{logs}" in [r.getMessage() for r in caplog.records]
