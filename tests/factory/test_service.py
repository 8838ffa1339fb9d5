"""The factory process: configs refused with their problems, changes picked up without a restart
(on SIGHUP and on file change) while a bad new file leaves the old config in force, sites added
and dropped, and `floe factory --check / --once`."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from floe.cli.main import main as floe
from floe.config.factory import load_factory_config
from floe.config.schema import ConfigError
from floe.factory import service
from floe.factory.service import Factory
from tests.pilot.live import ROOT, LiveMatchmaker, wait_for

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
    for fragment in ('matchmaker: "ftp://x" is not an http:// or https:// address',
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


def run_factory(config: Path, *options: str, **env: str) -> subprocess.CompletedProcess:
    """`floe factory --config CONFIG OPTIONS...` as a real process that must end by itself."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOE_")}
    return subprocess.run([sys.executable, "-m", "floe.cli.main", "factory", "--config",
                           str(config), *options], cwd=ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=60)


def test_a_users_token_as_the_site_token_is_refused_at_start_and_by_check(matchmaker, tmp_path):
    token_file = tmp_path / "site.token"
    token_file.touch(mode=0o600)
    token_file.write_text(matchmaker.user_token + "\n")
    path = write_toml(tmp_path / "site.toml", site_document(
        matchmaker, tmp_path / "factory", token_file=str(token_file)))
    said = (f"floe factory: site site-a: token_file {token_file} holds a user's token "
            "(floe_u_...), not the site's factory token (floe_s_...): on the matchmaker's host, "
            "`floe site add site-a` prints it once, and `floe site token site-a` replaces a "
            "lost one\n")
    for mode in (["--check"], []):  # a factory that took it would run on, to the timeout
        done = run_factory(path, *mode)
        assert (done.returncode, done.stderr) == (2, said)


def test_the_matchmaker_given_on_the_command_line_or_in_floe_url_wins_and_the_log_says_so(
        matchmaker, tmp_path, start_factory):
    nowhere = "http://127.0.0.1:9"
    document = dict(site_document(matchmaker, tmp_path / "factory"), matchmaker=nowhere)
    path = write_toml(tmp_path / "site.toml", document)
    checked = run_factory(path, "--check", FLOE_SITE_TOKEN=matchmaker.site_token,
                          FLOE_URL=matchmaker.url)
    assert checked.returncode == 0, checked.stderr
    assert (f"the matchmaker at {matchmaker.url} (from FLOE_URL, not {path}'s {nowhere}) "
            "knows it") in checked.stdout
    checked = run_factory(path, "--check", "--matchmaker", matchmaker.url,
                          FLOE_SITE_TOKEN=matchmaker.site_token, FLOE_URL=nowhere)
    assert checked.returncode == 0, checked.stderr
    assert f"(from --matchmaker, not {path}'s {nowhere})" in checked.stdout
    factory = start_factory(path, matchmaker.site_token, {"FLOE_URL": matchmaker.url})
    wait_for(lambda: "started for" in factory.text(), 30, "the factory's start line")
    assert (f"started for {matchmaker.url} (from FLOE_URL, not {path}'s {nowhere}) with site "
            "site-a") in factory.text()
    status = tmp_path / "factory" / "site-a" / "status.json"
    wait_for(lambda: status.exists() and "demand" in json.loads(status.read_text()), 30,
             "a cycle that asked that matchmaker")


def test_a_tls_matchmaker_whose_certificate_is_not_trusted_is_said_with_the_fix(tmp_path):
    (tmp_path / "tls").mkdir()
    live = LiveMatchmaker(tmp_path / "tls", tls=True)
    live.start()
    try:
        path = write_toml(tmp_path / "site.toml", site_document(live, tmp_path / "factory"))
        done = run_factory(path, "--check", FLOE_SITE_TOKEN=live.site_token)
        assert done.returncode == 1
        assert (f"site site-a: cannot reach the matchmaker at {live.url}: its certificate is "
                "not trusted here (self-signed certificate); give `cacert` in the factory's "
                "config the CA certificate that signed it") in done.stderr
        trusted = dict(site_document(live, tmp_path / "factory"), cacert=str(live.cacert))
        done = run_factory(write_toml(path, trusted), "--check", FLOE_SITE_TOKEN=live.site_token)
        assert done.returncode == 0, done.stderr
    finally:
        live.close()
