"""`floe submit` and `floe status` against a real matchmaker process on loopback: human and
JSON output, and the sentences a user gets for a wrong token, an invalid config and a server
that is not there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from floe.cli.client import LATEST_ENDED, percent_ended
from floe.cli.http import Client
from tests.cli.support import as_user, config_file, run, run_json, run_process
from tests.pilot.live import LiveMatchmaker, free_port, wait_for
from tests.pilot.scripted import ScriptedPilot

CONFIG = {
    "description": "three jobs that count events",
    "jobs": 3,
    "tasks": [{"name": "count", "modules": [{"command": "echo counting"}]}],
}


def submitted(capsys: pytest.CaptureFixture[str], matchmaker: LiveMatchmaker,
              tmp_path: Path) -> int:
    """Submit CONFIG with `floe submit --json`; the new dataset's id once all its jobs exist."""
    status, out, err = run(capsys, "submit", str(config_file(tmp_path, CONFIG)), "--json",
                           *as_user(matchmaker))
    assert status == 0, err
    dataset = json.loads(out)["id"]
    wait_for(lambda: matchmaker.get(f"/datasets/{dataset}")["jobs_created"] == CONFIG["jobs"],
             10, "the jobs to be created")
    return dataset


def complete_one_task(matchmaker: LiveMatchmaker, events: float) -> None:
    """Act as a pilot: take one task and report it done with an `events` statistic."""
    ScriptedPilot(matchmaker).run_one(statistics={"events": events})


def test_submit_prints_the_new_dataset_and_the_command_to_follow_it(
        capsys, matchmaker, tmp_path):
    status, out, err = run(capsys, "submit", str(config_file(tmp_path, CONFIG)),
                           *as_user(matchmaker))
    assert status == 0, err
    [listed] = matchmaker.get("/datasets")["datasets"]
    dataset = listed["id"]
    assert out.strip() == (f"dataset {dataset} submitted: 3 jobs of 1 task (count); follow it "
                           f"with `floe status {dataset}`")
    assert listed["owner"] == "alice" and listed["jobs"] == 3
    assert listed["description"] == CONFIG["description"]


def test_submit_json_is_the_servers_summary_of_the_dataset(capsys, matchmaker, tmp_path):
    status, out, _ = run(capsys, "submit", str(config_file(tmp_path, CONFIG)), "--json",
                         *as_user(matchmaker))
    assert status == 0
    printed = json.loads(out)
    assert printed["owner"] == "alice" and printed["task_names"] == ["count"]
    assert printed["tasks_per_job"] == 1 and printed["jobs"] == 3
    assert matchmaker.get(f"/datasets/{printed['id']}")["config"]["jobs"] == 3


def test_status_on_an_empty_matchmaker_says_how_to_start(capsys, matchmaker):
    status, out, _ = run(capsys, "status", *as_user(matchmaker))
    assert status == 0
    assert out.strip() == "no datasets yet; submit one with `floe submit CONFIG.json`"


def test_status_lists_every_dataset_with_its_progress(capsys, matchmaker, tmp_path):
    dataset = submitted(capsys, matchmaker, tmp_path)
    complete_one_task(matchmaker, events=7)
    status, out, _ = run(capsys, "status", *as_user(matchmaker))
    assert status == 0
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "OWNER", "STATUS", "JOBS"]
    assert row.split()[:4] == [str(dataset), "alice", "processing", "3"]
    # One task of three complete: a third of the bar and 33.3% done.
    assert "[" + "#" * 10 + "." * 20 + "]" in row and "33.3%" in row
    assert row.rstrip().endswith(CONFIG["description"])


def test_status_lists_the_open_datasets_and_the_latest_ended_and_says_where_the_rest_are(
        capsys, matchmaker, tmp_path):
    ended = []
    for _ in range(LATEST_ENDED + 2):
        ended.append(matchmaker.submit(dict(CONFIG, jobs=1)))
        assert matchmaker.api("POST", f"/datasets/{ended[-1]}/abort", {})[0] == 200
    running = submitted(capsys, matchmaker, tmp_path)
    status, out, _ = run(capsys, "status", *as_user(matchmaker))
    assert status == 0
    lines = out.strip().splitlines()
    assert [int(line.split()[0]) for line in lines[1:-1]] == [*ended[2:], running]
    assert lines[-1] == ("(2 older datasets ended: `floe status --all`, or `floe datasets "
                         "--status ended --limit N` for the latest N, lists them)")
    everything = run_json(capsys, "status", "--all", "--json", *as_user(matchmaker))
    assert [d["id"] for d in everything] == [*ended, running]
    assert [d["id"] for d in run_json(capsys, "status", "--json", *as_user(matchmaker))] == \
        [*ended[2:], running]
    answer = run_json(capsys, "datasets", "--status", "ended", "--limit", "3",
                      *as_user(matchmaker))
    assert [d["id"] for d in answer["datasets"]] == ended[-3:] and answer["more"] == 9
    status, out, _ = run(capsys, "datasets", "--status", "open", *as_user(matchmaker))
    assert [row.split()[0] for row in out.strip().splitlines()] == ["ID", str(running)]
    status, out, _ = run(capsys, "datasets", "--limit", "2", *as_user(matchmaker))
    assert out.strip().splitlines()[-1] == \
        "(and 11 older: a larger --limit, up to 1000, or none lists them)"


def test_status_keeps_a_dataset_that_ends_between_its_two_requests(
        capsys, matchmaker, monkeypatch):
    running = matchmaker.submit(dict(CONFIG, jobs=1))
    asked = Client.get

    def get(self: Client, path: str, **query: Any) -> Any:
        answer = asked(self, path, **query)
        if query.get("status") == "open":  # it ends right after the first request
            assert matchmaker.api("POST", f"/datasets/{running}/abort", {})[0] == 200
        return answer

    monkeypatch.setattr(Client, "get", get)
    [listed] = run_json(capsys, "status", *as_user(matchmaker))
    assert listed["id"] == running


@pytest.mark.parametrize(("complete", "failed", "total", "shown", "whole"), [
    (0, 0, 3, "0.0", "0"), (1, 0, 3, "33.3", "33"), (0, 3, 3, "100.0", "100"),
    (1, 2, 100_000, "0.003", "0.003"), (99_990, 9, 100_000, "99.999", "99.999"),
    (0, 0, 0, "0.0", "0")])
def test_the_percent_ended_is_neither_0_nor_100_while_some_tasks_have_and_some_have_not(
        complete, failed, total, shown, whole):
    counts = {"ready": total - complete - failed, "complete": complete, "failed": failed}
    assert percent_ended(counts) == shown
    assert percent_ended(counts, decimals=0) == whole


def test_status_json_lists_the_datasets_as_the_api_does(capsys, matchmaker, tmp_path):
    dataset = submitted(capsys, matchmaker, tmp_path)
    status, out, _ = run(capsys, "status", "--json", *as_user(matchmaker))
    assert status == 0
    [printed] = json.loads(out)
    assert printed["id"] == dataset and printed["tasks"]["ready"] == 3


def test_status_of_one_dataset_shows_its_tasks_and_statistics(capsys, matchmaker, tmp_path):
    dataset = submitted(capsys, matchmaker, tmp_path)
    complete_one_task(matchmaker, events=7)
    status, out, _ = run(capsys, "status", str(dataset), *as_user(matchmaker))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"dataset {dataset} of alice: processing, priority 1.0, max_retries 3"
    assert lines[1].strip() == CONFIG["description"]
    assert lines[2].strip() == "jobs: 3 (3 created), 1 task each: count"
    assert "tasks: waiting 0, ready 2, processing 0, complete 1, failed 0, suspended 0" in out
    assert "  2 count tasks ready: no running pilot has said it has a slot for it, and no " \
           "factory has said what pilots it can start" in lines
    [events] = [line.split() for line in lines if " events " in line]
    assert events[:4] == ["user", "events", "n=1", "sum=7"]
    assert "recent events:" in out and "submit" in out


def test_status_json_of_one_dataset_carries_its_config_and_statistics(
        capsys, matchmaker, tmp_path):
    dataset = submitted(capsys, matchmaker, tmp_path)
    complete_one_task(matchmaker, events=4)
    status, out, _ = run(capsys, "status", str(dataset), "--json", *as_user(matchmaker))
    assert status == 0
    printed = json.loads(out)
    assert printed["id"] == dataset and printed["config"]["tasks"][0]["name"] == "count"
    assert printed["tasks"]["complete"] == 1
    overall = [s for s in printed["statistics"] if s["name"] == "events" and s["task"] is None]
    assert [(s["count"], s["sum"], s["mean"]) for s in overall] == [(1, 4.0, 4.0)]
    assert printed["statistics"] == matchmaker.get(f"/datasets/{dataset}/statistics")[
        "statistics"]


def test_status_of_a_dataset_that_does_not_exist_says_so(capsys, matchmaker):
    status, out, err = run(capsys, "status", "999", *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err.strip() == "floe status: there is no dataset 999"


def test_a_wrong_token_gets_one_sentence_and_a_failing_exit_status(matchmaker, tmp_path):
    for args in (["status"], ["submit", str(config_file(tmp_path, CONFIG))]):
        result = run_process(tmp_path, *args, "--url", matchmaker.url, "--token",
                             "floe_u_not-a-token-anyone-was-given")
        assert result.returncode == 1, result
        assert result.stdout == ""
        assert result.stderr.strip() == (f"floe {args[0]}: this token is not known or was "
                                         "revoked; ask an admin for a new one")
    assert matchmaker.get("/datasets")["datasets"] == []


def test_no_token_at_all_says_where_a_token_comes_from(capsys, matchmaker):
    status, _, err = run(capsys, "status", "--url", matchmaker.url)
    assert status == 1
    assert err.count("\n") == 1
    assert ("(no token given: use --token-file or --token, FLOE_TOKEN_FILE or FLOE_TOKEN, or "
            "the token of client.toml)") in err


def test_an_invalid_config_is_refused_locally_with_the_path_of_the_problem(
        capsys, matchmaker, tmp_path):
    document = json.loads(json.dumps(CONFIG))
    document["tasks"][0]["requirements"] = {"memory": "lots"}
    path = config_file(tmp_path, document, "bad.json")
    # Against an address where nothing listens, so any answer can only come from the local check.
    status, out, err = run(capsys, "submit", str(path), "--url",
                           f"http://127.0.0.1:{free_port()}", "--token", matchmaker.user_token)
    assert status == 1 and out == ""
    assert err.startswith(f"floe submit: {path} is not a valid dataset config:")
    assert ('tasks[0].requirements.memory: expected a size like "4GB" of at most 1PiB, got '
            '"lots"') in err
    assert "cannot reach" not in err
    status, _, err = run(capsys, "submit", str(path), *as_user(matchmaker))
    assert status == 1 and "tasks[0].requirements.memory" in err
    assert matchmaker.get("/datasets")["datasets"] == []


def test_a_config_file_that_is_not_there_is_named(capsys, tmp_path):
    missing = tmp_path / "nowhere.json"
    status, _, err = run(capsys, "submit", str(missing), "--url", "http://127.0.0.1:9")
    assert status == 1
    assert f"{missing}: cannot read the dataset config" in err


@pytest.mark.parametrize("args", [["status"], ["status", "1"], ["submit", "CONFIG"]])
def test_an_unreachable_matchmaker_gets_a_clear_sentence(capsys, tmp_path, args):
    args = [str(config_file(tmp_path, CONFIG)) if a == "CONFIG" else a for a in args]
    url = f"http://127.0.0.1:{free_port()}"
    status, out, err = run(capsys, *args, "--url", url, "--token", "floe_u_whatever")
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"floe {args[0]}: cannot reach the matchmaker at {url}: ")
    assert err.rstrip().endswith("(is `floe server` running? set --url or FLOE_URL)")


def test_users_and_shares_changed_on_the_server_host_reach_the_running_server(
        matchmaker: LiveMatchmaker, capsys):
    matchmaker._floe("user", "add", "carol")
    matchmaker._floe("user", "share", "alice", "3")

    def seen() -> bool:
        users = {u["name"]: u for u in matchmaker.get("/users")["users"]}
        return "carol" in users and users["alice"]["share"] == 3.0
    wait_for(seen, 15, "the server to take the new user and share")


def test_tasks_say_why_a_ready_task_waits(capsys, matchmaker, tmp_path):
    dataset = submitted(capsys, matchmaker, tmp_path)
    status, out, _ = run(capsys, "tasks", str(dataset), "--state", "ready", *as_user(matchmaker))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[-1] == "WHY" and len(lines) == 4
    assert all(line.endswith("no pilot is running, and no factory has said what pilots it "
                             "can start (start `floe factory` for a site, or `floe pilot`)")
               for line in lines[1:]), out
    first = lines[1].split()[0]
    status, out, _ = run(capsys, "attempts", first, *as_user(matchmaker))
    assert out.splitlines()[1:3] == [
        "why it waits: no pilot is running, and no factory has said what pilots it can start "
        "(start `floe factory` for a site, or `floe pilot`)", "no attempts yet"]
