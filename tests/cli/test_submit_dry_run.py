"""`floe submit -` (the config on stdin) and `floe submit --dry-run` against a real matchmaker:
what a dry run shows and that it stores nothing, that it is refused as the submit would be (the
server's own checks, its limits, the caller's role), and the sentences for a stdin that is empty
or holds no JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.pilot.live import SETTINGS, LiveMatchmaker

from .support import as_user, config_file, run, run_json

CONFIG = {
    "description": "a dry run of two tasks",
    "jobs": 4,
    "steering": {"seed_base": 1000, "cores": 2},
    "tasks": [
        {"name": "generate",
         "requirements": {"cpus": "$steering(cores)", "memory": "2GiB", "walltime": "30m"},
         "env": {"SEED": "$eval($steering(seed_base) + $args(job))"},
         "inputs": [{"url": "https://example.org/gen.py", "local": "gen.py"}],
         "modules": [{"name": "gen", "command": [
             "python3", "gen.py", "--seed", "$eval($steering(seed_base) + $args(job))",
             "--out", "$system(scratch)/gen.i3"]}],
         "outputs": [{"local": "gen.i3", "url": "file:///data/$args(dataset)/gen_"
                                                "$sprintf(\"%06d\", $args(job)).i3"}]},
        {"name": "simulate", "depends": ["generate"], "requirements": {"gpus": 1},
         "modules": [{"command": "echo job $args(job) of $args(jobs_submitted)"}]},
    ],
}


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    """What `floe` reads on stdin: `data`, piped (not a terminal)."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_submit_dash_submits_the_config_piped_in_on_stdin(capsys, matchmaker, monkeypatch):
    stdin(monkeypatch, json.dumps(CONFIG).encode())
    status, out, err = run(capsys, "submit", "-", *as_user(matchmaker))
    assert status == 0, err
    [listed] = matchmaker.get("/datasets")["datasets"]
    assert listed["description"] == CONFIG["description"] and listed["jobs"] == 4
    assert out.startswith(f"dataset {listed['id']} submitted: 4 jobs of 2 tasks")


def test_an_empty_stdin_is_named_with_how_to_pipe_a_config_in(capsys, matchmaker, monkeypatch):
    stdin(monkeypatch, b"  \n")
    status, out, err = run(capsys, "submit", "-", *as_user(matchmaker))
    assert (status, out) == (1, "")
    assert err == ("floe submit: stdin is not a valid dataset config:\nstdin is empty: pipe the "
                   "dataset config in (`floe submit - < dataset.json`), or give its file name "
                   "instead of -\n")
    assert matchmaker.get("/datasets")["datasets"] == []


def test_a_stdin_that_is_not_json_says_where_and_what_it_must_be(capsys, matchmaker,
                                                                   monkeypatch):
    stdin(monkeypatch, b'{"jobs": 2,\n  tasks: []}')
    status, _, err = run(capsys, "submit", "-", *as_user(matchmaker))
    assert status == 1
    assert err == ("floe submit: stdin is not a valid dataset config:\nstdin: line 2, column 3: "
                   "Expecting property name enclosed in double quotes (stdin is not one JSON "
                   "document; send the dataset config as JSON, see docs/config.md)\n")
    stdin(monkeypatch, b"\xff{}")
    status, _, err = run(capsys, "submit", "-", *as_user(matchmaker))
    assert status == 1 and "stdin: not UTF-8 text (byte 0)" in err
    assert matchmaker.get("/datasets")["datasets"] == []


def test_a_config_on_stdin_that_breaks_the_schema_names_the_field(capsys, matchmaker,
                                                                  monkeypatch):
    stdin(monkeypatch, json.dumps(dict(CONFIG, jobs=0)).encode())
    status, _, err = run(capsys, "submit", "-", *as_user(matchmaker))
    assert status == 1
    assert err.startswith("floe submit: stdin is not a valid dataset config:\njobs: ")


def test_a_dry_run_shows_what_would_be_created_and_creates_nothing(capsys, matchmaker,
                                                                   tmp_path):
    path = config_file(tmp_path, CONFIG)
    status, out, err = run(capsys, "submit", "--dry-run", str(path), *as_user(matchmaker))
    assert status == 0, err
    assert out.splitlines() == [
        f"dry run: the matchmaker at {matchmaker.url} takes this dataset of alice; nothing was "
        "submitted",
        "  a dry run of two tasks",
        "  4 jobs of 2 tasks (generate, simulate): 8 tasks in all; priority 1, max_retries 3",
        "job 0 (expressions that need the site, the dataset's id or the attempt stay as "
        "written):",
        "  generate: 2 CPUs, 2GiB memory, 1GiB disk, 30m",
        "    env SEED=1000",
        "    input  https://example.org/gen.py -> gen.py",
        "    gen: python3 gen.py --seed 1000 --out '$system(scratch)/gen.i3'",
        "    output gen.i3 -> file:///data/$args(dataset)/gen_000000.i3",
        "  simulate (after generate): 1 CPU, 1GiB memory, 1GiB disk, 1 GPU, 1h",
        "    module0: echo job 0 of 4",
    ]
    assert matchmaker.get("/datasets")["datasets"] == []


def test_a_dry_run_json_is_the_answer_the_api_document_declares(capsys, matchmaker, tmp_path,
                                                                 monkeypatch):
    stdin(monkeypatch, json.dumps(CONFIG).encode())
    preview = run_json(capsys, "submit", "--dry-run", "-", *as_user(matchmaker))
    assert preview["dry_run"] is True and preview["owner"] == "alice"
    assert (preview["jobs"], preview["tasks_per_job"], preview["total_tasks"]) == (4, 2, 8)
    generate, simulate = preview["first_job"]
    assert generate["requirements"]["cpus"] == 2 and simulate["depends"] == ["generate"]
    assert generate["env"] == {"SEED": 1000}
    assert generate["modules"][0]["command"][3:] == [1000, "--out", "$system(scratch)/gen.i3"]
    document = matchmaker.get("/openapi.json")
    answers = document["paths"]["/api/v1/datasets"]["post"]["responses"]
    Draft202012Validator(answers["200"]["content"]["application/json"]["schema"]).validate(
        preview)
    [parameter] = document["paths"]["/api/v1/datasets"]["post"]["parameters"]
    assert parameter["name"] == "dry_run" and parameter["schema"]["type"] == "boolean"
    assert matchmaker.get("/datasets")["datasets"] == []


def test_a_dry_run_refuses_what_only_the_server_checks(capsys, matchmaker, tmp_path):
    # The local check does not evaluate commands per job; the server's check does, for a submit
    # and for its dry run alike.
    document = json.loads(json.dumps(CONFIG))
    document["tasks"][1]["modules"][0]["command"] = "echo $eval(1 / ($args(job) - 3))"
    path = config_file(tmp_path, document)
    for dry_run in (["--dry-run"], []):
        status, out, err = run(capsys, "submit", *dry_run, str(path), *as_user(matchmaker))
        assert (status, out) == (1, "")
        assert err.startswith("floe submit: the dataset config is not valid:\n"
                              "tasks[1].modules[0].command: ")
        assert "(for job 3)" in err
    assert matchmaker.get("/datasets")["datasets"] == []


@pytest.fixture
def small_matchmaker(tmp_path: Path) -> Iterator[LiveMatchmaker]:
    """A matchmaker that takes at most 3 jobs per dataset."""
    (tmp_path / "small").mkdir()
    live = LiveMatchmaker(tmp_path / "small", settings=SETTINGS + "max_jobs_per_dataset = 3\n")
    live.start()
    yield live
    live.close()


def test_a_dry_run_is_refused_past_the_servers_limits(capsys, small_matchmaker, tmp_path):
    path = config_file(tmp_path, CONFIG)
    status, _, err = run(capsys, "submit", "--dry-run", str(path), *as_user(small_matchmaker))
    assert status == 1
    assert err == ("floe submit: jobs: this server takes at most 3 jobs per dataset "
                   "(max_jobs_per_dataset), got 4; submit the production as several datasets\n")
    assert small_matchmaker.get("/datasets")["datasets"] == []


def test_a_dry_run_needs_a_token_that_may_submit(capsys, matchmaker, tmp_path):
    path = config_file(tmp_path, CONFIG)
    status, _, err = run(capsys, "submit", "--dry-run", str(path), "--url", matchmaker.url)
    assert status == 1 and "(no token given: " in err
    status, _, err = run(capsys, "submit", "--dry-run", str(path),
                         *as_user(matchmaker, matchmaker.site_token))
    assert status == 1
    assert err == ("floe submit: the factory of site site-a may not submit datasets: that needs "
                   "an admin or a user\n")
