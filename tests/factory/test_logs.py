"""Old pilot logs leave the factory's workdir: once an hour, after the site's
`keep_pilot_logs`, never those of a pilot still tracked; a failure is said and tried again."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from floe.factory.judging import Tracked
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
    # Not this factory's pilots' output: an HTCondor event log, another factory's, a note.
    others = [old_file(logs, name) for name in (
        "floe-f1-small.log", "floe-f2-small-aa.out", "notes.txt", "floe-f1-small-aa.out.txt")]
    pruning = LogPruning("site-a")
    pruning.maybe(plugin, 0, [], 1000.0)
    assert first.exists()
    pruning.maybe(plugin, 86400, [], 1000.0)
    assert not first.exists()
    second = old_file(logs, "floe-f1-small-bb.out")
    pruning.maybe(plugin, 86400, [], 1000.0 + EVERY - 1)
    assert second.exists()
    pruning.maybe(plugin, 86400, [], 1000.0 + EVERY)
    assert not second.exists()
    assert all(path.exists() for path in others)


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
                    f"again in an hour): cannot use {logs} for the pilots' logs (File exists): "
                    "it must be a directory this account can write; move whatever is there "
                    "aside.")
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
    gone = old_file(logs, f"{site.plugin.tag_prefix}small-0a1b.out")
    kept = old_file(logs, f"{site.plugin.tag_prefix}small-2c3d.out", age=3600)
    with caplog.at_level(logging.INFO, logger="floe.factory"):
        site.cycle()
    assert not gone.exists() and kept.exists()
    assert f"site site-a: removed 1 pilot log file last written more than 1d ago from " \
           f"{logs}" in [r.getMessage() for r in caplog.records]


def test_the_log_of_a_pilot_that_ended_in_the_cycle_is_read_before_it_may_go(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog) -> None:
    site = make_runner(site_document(matchmaker, tmp_path / "factory", keep_pilot_logs="1h"))
    now = time.time()
    # A pilot quiet for 2 hours that the batch system no longer lists: it ended.
    site.pilots["5eed"] = Tracked("5eed", "small", submitted=now - 7200, started=now - 7200)
    logs = Path(site.plugin.pilot_dir("logs"))
    last = old_file(logs, f"{site.plugin.tag_prefix}small-5eed.out", age=7200)
    last.write_text("floe pilot: cannot reach the matchmaker\n")
    os.utime(last, (now - 7200, now - 7200))
    with caplog.at_level(logging.WARNING, logger="floe.factory"):
        site.cycle()
    assert last.exists()
    assert any("pilot 5eed ended without registering" in r.getMessage()
               and "its log ends: floe pilot: cannot reach the matchmaker" in r.getMessage()
               for r in caplog.records)
    site.log_pruning.due = 0.0  # an hour later: judged and forgotten, it goes
    site.cycle()
    assert not last.exists()
