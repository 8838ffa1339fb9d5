"""A Python client generated from the OpenAPI document that a real matchmaker process serves
(openapi-python-client, from PyPI, run here on the saved document: nothing is fetched), used
against that server: a pilot asks for a task and reports it, and a user lists the datasets, a
dataset's tasks and a task's attempts, each answer read into the client's typed models."""

from __future__ import annotations

import importlib
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.pilot.live import LiveMatchmaker

from . import support as s

CONFIG = """\
project_name_override: floe_client
package_name_override: floe_client
post_hooks: []
content_type_overrides:
  text/plain: application/octet-stream
"""
"""The generator's settings: no formatting afterwards (it would run ruff), and an uploaded log
(plain text) sent as bytes."""


def generate(url: str, folder: Path) -> None:
    """Generate the client of the document at `url` as the package `floe_client` in `folder`;
    any warning (a part of the document the generator cannot make code of) fails."""
    with urllib.request.urlopen(f"{url}/api/v1/openapi.json", timeout=10) as answer:
        (folder / "openapi.json").write_bytes(answer.read())
    (folder / "config.yaml").write_text(CONFIG)
    made = subprocess.run(
        [str(Path(sys.executable).parent / "openapi-python-client"), "generate", "--path",
         str(folder / "openapi.json"), "--config", str(folder / "config.yaml"), "--meta", "none",
         "--output-path", str(folder / "floe_client"), "--fail-on-warning"],
        capture_output=True, text=True, timeout=120, cwd=folder, check=False)
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-2000:]


@pytest.fixture
def floe_client(matchmaker: LiveMatchmaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The generated client's package, imported from `tmp_path` (and forgotten after)."""
    generate(matchmaker.url, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("floe_client")
    for name in [name for name in sys.modules if name.split(".")[0] == "floe_client"]:
        del sys.modules[name]


def test_a_generated_client_lists_datasets_tasks_and_attempts(matchmaker, floe_client):
    ask, report, list_datasets, tasks, task_of = (importlib.import_module(
        f"floe_client.api.{name}") for name in ("pilots.ask", "attempts.report",
                                                "datasets.list_datasets", "datasets.tasks",
                                                "datasets.task"))
    models = importlib.import_module("floe_client.models")
    dataset = matchmaker.submit(s.config(jobs=2))
    pilot, key = matchmaker.register_pilot()
    as_pilot = floe_client.AuthenticatedClient(base_url=matchmaker.url, token=key,
                                               raise_on_unexpected_status=True)
    asked = ask.sync(pilot, client=as_pilot, body=models.AskBody(
        cpus=1, memory=2**30, disk=2**30, seconds=3600))
    given = asked.attempt
    reported = report.sync(
        given.id, client=as_pilot.with_headers({"X-Floe-Passkey": given.passkey}),
        body=models.ReportBody.from_dict({"exit_code": 0, "statistics": {"events": 7}}))
    assert (reported.recorded, reported.task_state) == (True, "complete")

    as_user = floe_client.AuthenticatedClient(base_url=matchmaker.url,
                                              token=matchmaker.user_token,
                                              raise_on_unexpected_status=True)
    listed = list_datasets.sync(client=as_user)
    [shown] = listed.datasets
    assert isinstance(shown, models.Dataset)
    assert (shown.id, shown.owner, shown.jobs, shown.task_names) == (dataset, "alice", 2,
                                                                      ["work"])
    page = tasks.sync(dataset, client=as_user)
    assert [task.job for task in page.tasks] == [0, 1]
    assert all(isinstance(task, models.TaskRow) for task in page.tasks)
    task = task_of.sync(given.task_id, client=as_user)
    assert isinstance(task, models.Task) and task.state == models.TaskState.COMPLETE
    [attempt] = task.attempts
    assert isinstance(attempt, models.Attempt)
    assert (attempt.attempt_id, attempt.exit_code, attempt.pilot_id) == (given.id, 0, pilot)
    assert attempt.statistics.to_dict() == {"events": 7}
    assert (attempt.requested.cpus, attempt.state) == (1, models.AttemptState.COMPLETE)
