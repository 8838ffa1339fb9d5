"""What the factory tests share: the pilot bundle (built once), site configs written as a site
admin would, DAG datasets, and a real `floe factory` process."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from floe.config.factory import factory_config, to_toml
from floe.factory.site import SiteRunner
from floe.pilot.bundle import build
from floe.plugins import BatchError
from tests.pilot.live import ROOT, LiveMatchmaker

SHAPE = {"name": "small", "cpus": 1, "memory": "512MiB", "disk": "1GiB", "walltime": "20m"}


@pytest.fixture(autouse=True)
def matchmaker_of_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The factories under test go to the matchmaker their config names: a FLOE_URL in the
    environment of the test run would replace it."""
    monkeypatch.delenv("FLOE_URL", raising=False)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("bundle") / "pilot.pyz")


def dag_dataset(jobs: int, **options: Any) -> dict[str, Any]:
    """`jobs` jobs of two tasks each, the second depending on the first (and checking that no
    token reached it)."""
    requirements = {"cpus": 1, "memory": "64MB", "disk": "1MB", "walltime": "2m"}
    return {"description": "factory test", "jobs": jobs, **options, "tasks": [
        {"name": "gen", "requirements": requirements,
         "modules": [{"command": "echo gen $args(job)"}]},
        {"name": "sum", "depends": ["gen"], "requirements": requirements,
         # Fails should a secret of the factory or the pilot reach a task.
         "modules": [{"command": ["sh", "-c",
                                  'test -z "$FLOE_SITE_TOKEN$FLOE_PILOT_TOKEN"']}]}]}


def site_document(matchmaker: LiveMatchmaker, workdir: Path, plugin: str = "local",
                  factory_id: str | None = None, shapes: list[dict[str, Any]] | None = None,
                  **site: Any) -> dict[str, Any]:
    """A factory config for site-a with quick cycles and short-lived pilots."""
    return {
        "matchmaker": matchmaker.url,
        "factory_id": factory_id or f"t{secrets.token_hex(4)}",
        "workdir": str(workdir),
        "sites": [{"name": "site-a", "plugin": plugin, "shapes": shapes or [dict(SHAPE)],
                   "cycle": "1s", "idle_timeout": "3s", "min_pilot_life": "1s",
                   "removal_grace": "2s", "backoff": "1s", "python": sys.executable,
                   "max_queued": 4, "max_total": 4, "max_per_cycle": 4, **site}],
    }


def write_toml(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(to_toml(document))
    return path


def runner(matchmaker: LiveMatchmaker, bundle: Path, document: dict[str, Any]) -> SiteRunner:
    """The SiteRunner of the document's one site, driven cycle by cycle by the test."""
    config = factory_config(document)
    return SiteRunner(config, config.sites[0], bundle, matchmaker.site_token)


@pytest.fixture
def make_runner(matchmaker: LiveMatchmaker, bundle: Path) -> Iterator[Any]:
    """`make_runner(document)`: a SiteRunner; every pilot of every runner made is removed
    after the test, whatever the test did."""
    made: list[SiteRunner] = []

    def make(document: dict[str, Any]) -> SiteRunner:
        site = runner(matchmaker, bundle, document)
        made.append(site)
        return site

    yield make
    for site in made:
        with contextlib.suppress(BatchError):   # a test's deliberately dead batch system
            site.plugin.remove_orphans(set())   # every live pilot tagged as this factory's


def record_path(name: str, status: Mapping[str, Any], matchmaker: LiveMatchmaker,
                dataset: int) -> dict[str, Any]:
    """What one kind of site did in a test (pilots submitted and registered, tasks completed;
    `status` is the site's status.json), kept in test-artifacts/sites/<name>.json for the
    record of the run; returned too."""
    pilots = matchmaker.get("/pilots?site=site-a&limit=1000")["pilots"]
    states = matchmaker.states(dataset)
    record = {"path": name, "pilots_submitted": status["counters"]["submitted"],
              "pilots_registered": len(pilots), "tasks_completed": states.count("complete"),
              "tasks": len(states),
              "ended_unregistered": status["counters"]["ended_unregistered"],
              "last_error": status["health"]["last_error"]}
    folder = ROOT / "test-artifacts" / "sites"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


class FactoryProcess:
    """`floe factory --config FILE` as a site admin runs it: with this test's Python, or with
    `python`, the command that runs Python (`["setpriv", "--reuid=USER", ..., "python3"]` to run
    it as another user)."""

    def __init__(self, config: Path, token: str, env: dict[str, str] | None = None,
                 python: Sequence[str] = (sys.executable,)) -> None:
        self.log = config.with_suffix(".log")
        environment = {**os.environ, "FLOE_SITE_TOKEN": token, **(env or {})}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [*python, "-m", "floe.cli.main", "factory", "--config", str(config)],
                cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_factory() -> Iterator[Any]:
    started: list[FactoryProcess] = []

    def start(config: Path, token: str, env: dict[str, str] | None = None,
              python: Sequence[str] = (sys.executable,)) -> FactoryProcess:
        process = FactoryProcess(config, token, env, python)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
