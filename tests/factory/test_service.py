"""The factory process: configs refused with their problems, changes picked up without a restart
(on SIGHUP and on file change) while a bad new file leaves the old config in force, sites added
and dropped, and `floe factory --check / --once`."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cli.main import main as floe
from config.factory import load_factory_config
from config.schema import ConfigError
from factory import service
from factory.service import Factory
from tests.pilot.live import LiveMatchmaker, wait_for

from .conftest import dag_dataset, site_document, write_toml


@pytest.fixture
def running(matchmaker: LiveMatchmaker, bundle: Path, tmp_path: Path, monkeypatch):
    """A factory for site-a running in a thread, its config file, and its log."""
    monkeypatch.setenv("FLOE_SITE_TOKEN", matchmaker.site_token)
    monkeypatch.setattr(service, "RELOAD_CHECK", 0.2)
    document = site_document(matchmaker, tmp_path / "factory", max_queued=2, max_total=2)
    path = write_toml(tmp_path / "site.toml", document)
    factory = Factory(path, bundle)
    factory.load()
    thread = threading.Thread(target=factory.run, daemon=True)
    thread.start()
    yield factory, path, document
    factory.stop()
    thread.join(60)
    assert not thread.is_alive()


def rewrite(path: Path, document: dict) -> None:
    write_toml(path, document)
    later = time.time() + 1   # a new mtime even within the file system's time resolution
    os.utime(path, (later, later))


def test_a_changed_file_is_taken_without_a_restart(running, caplog):
    factory, path, document = running
    caplog.set_level(logging.INFO, "floe.factory")
    document["sites"][0]["max_total"] = 3
    rewrite(path, document)
    wait_for(lambda: factory.runners["site-a"].limits.max_total == 3, 10, "the reload")
    # the new limits are in place a moment before the reload is logged
    wait_for(lambda: "factory config" in caplog.text and "taken" in caplog.text, 10,
             "the reload's log line")


def test_an_invalid_new_file_is_refused_and_the_old_config_stays(running, caplog):
    factory, path, document = running
    bad = json.loads(json.dumps(document))
    bad["sites"][0]["max_queued"] = "lots"
    bad["sites"][0]["shapes"][0]["memory"] = "huge"
    rewrite(path, bad)
    wait_for(lambda: "refused" in caplog.text, 10, "the refusal")
    assert "sites[0].max_queued" in caplog.text and "sites[0].shapes[0].memory" in caplog.text
    assert factory.runners["site-a"].limits.max_queued == 2
    path.write_text("this is [not toml")
    factory.request_reload()
    wait_for(lambda: "is not valid TOML" in caplog.text, 10, "the TOML refusal")
    assert factory.runners["site-a"].limits.max_queued == 2


def test_sighup_rereads_the_file(running):
    factory, path, document = running
    document["sites"][0]["max_per_cycle"] = 1
    write_toml(path, document)
    os.utime(path, (0, 0))   # no mtime change: only the signal can tell
    factory._mtime = 0
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        factory.install_signals()
        os.kill(os.getpid(), signal.SIGHUP)
        wait_for(lambda: factory.runners["site-a"].limits.max_per_cycle == 1, 10, "the SIGHUP")
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_sites_added_and_removed_by_a_reload_start_and_stop(running, matchmaker, tmp_path):
    factory, path, document = running
    matchmaker._floe("site", "add", "site-b")
    second = json.loads(json.dumps(document["sites"][0]))
    second["name"] = "site-b"
    document["sites"].append(second)
    rewrite(path, document)
    wait_for(lambda: "site-b" in factory.runners, 10, "site-b to start")
    wait_for(lambda: (tmp_path / "factory" / "site-b" / "status.json").exists(), 10,
             "site-b's first cycle")
    document["sites"] = document["sites"][:1]
    rewrite(path, document)
    wait_for(lambda: "site-b" not in factory.runners, 10, "site-b to stop")
    assert "site-a" in factory.runners


def test_a_config_with_mistakes_names_each_of_them(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('matchmaker = "ftp://x"\n[[sites]]\nname = "a"\nplugin = "lsf"\n'
                    'max_queued = 5\nmax_total = 2\nshapes = [{name = "s", memory = "lots"}]\n'
                    'colour = "red"\n')
    with pytest.raises(ConfigError) as caught:
        load_factory_config(path)
    text = str(caught.value)
    for fragment in ("matchmaker: expected an http:// or https:// address",
                     "sites[0].plugin", "sites[0].shapes[0].memory", "sites[0].colour"):
        assert fragment in text


def test_floe_factory_check_and_once(matchmaker: LiveMatchmaker, tmp_path, capsys, monkeypatch):
    path = write_toml(tmp_path / "site.toml", site_document(matchmaker, tmp_path / "factory"))
    monkeypatch.delenv("FLOE_SITE_TOKEN", raising=False)
    assert floe(["factory", "--config", str(path), "--check"]) == 2
    assert "no site token" in capsys.readouterr().err
    monkeypatch.setenv("FLOE_SITE_TOKEN", "floe_s_wrong")
    assert floe(["factory", "--config", str(path), "--check"]) == 1
    assert "site site-a: the matchmaker refused" in capsys.readouterr().err
    monkeypatch.setenv("FLOE_SITE_TOKEN", matchmaker.site_token)
    assert floe(["factory", "--config", str(path), "--check"]) == 0
    assert "the matchmaker at" in capsys.readouterr().out
    slurm_option = write_toml(tmp_path / "mistaken.toml", site_document(
        matchmaker, tmp_path / "factory", options={"partition": "short"}))
    assert floe(["factory", "--config", str(slurm_option), "--check"]) == 1
    assert ("site site-a: unknown local option 'partition'; the local plugin knows: "
            "gpus, keep_finished, kill_grace, run_as, state_dir") in capsys.readouterr().err
    matchmaker.submit(dag_dataset(1))
    assert floe(["factory", "--config", str(path), "--once"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["decision"]["submit"] == {"small": 1}
    assert (tmp_path / "factory" / "pilot.pyz").exists()
    monkeypatch.setenv("FLOE_SITE_TOKEN", "floe_s_wrong")
    assert floe(["factory", "--config", str(path), "--once"]) == 1
    status = json.loads(capsys.readouterr().out)
    assert status["health"]["failures"] == 1
    assert "refused" in status["health"]["last_error"]
