"""`floe pilots`, `sites`, `users` and `shares` against a real matchmaker process with scripted
pilots: tables, filters, paging, --json, and the sentence for an unknown site."""

from __future__ import annotations

import re

from floe.config.resources import GIB
from tests.cli.support import as_user, run, run_json
from tests.pilot.scripted import ScriptedPilot

CONFIG = {"jobs": 2, "tasks": [{"name": "count", "modules": [{"command": "echo counting"}]}]}
MEASURED = {"cpus": 8, "memory": 16 * GIB,
            "gpus": [{"index": 0, "name": "NVIDIA A100", "memory": 40 * GIB}]}


def test_pilots_shows_what_each_measured_and_runs(capsys, matchmaker):
    matchmaker.submit(CONFIG)
    busy = ScriptedPilot(matchmaker, "gpu01", MEASURED)
    attempt = busy.take()
    idle = ScriptedPilot(matchmaker, "cpu07", {"cpus": 2, "memory": 4 * GIB})
    status, out, err = run(capsys, "pilots", *as_user(matchmaker))
    assert status == 0, err
    header, first, second = [line.split() for line in out.strip().splitlines()]
    assert header == ["ID", "SITE", "HOST", "STATE", "CPUS", "MEMORY", "GPUS", "RUNNING", "AGE",
                      "SEEN", "EXIT"]
    assert first[:9] == [str(busy.pilot_id), "site-a", "gpu01", "running", "8", "16GiB", "1x",
                         "NVIDIA", "A100"]
    assert first[9] == str(attempt["id"])
    assert second[:8] == [str(idle.pilot_id), "site-a", "cpu07", "running", "2", "4GiB", "-",
                          "-"]


def test_pilots_filter_by_site_and_state_and_json_is_the_api_answer(capsys, matchmaker):
    ended = ScriptedPilot(matchmaker, "node1")
    running = ScriptedPilot(matchmaker, "node2")
    ended.sign_off("no work")
    answer = run_json(capsys, "pilots", "--state", "exited", *as_user(matchmaker))
    assert [p["pilot_id"] for p in answer["pilots"]] == [ended.pilot_id]
    assert answer["pilots"][0]["exit_reason"] == "no work" and answer["next"] is None
    answer = run_json(capsys, "pilots", "--site", "site-a", "--state", "running",
                      *as_user(matchmaker))
    assert answer == {"pilots": matchmaker.get("/pilots?state=running")["pilots"], "next": None}
    assert [p["pilot_id"] for p in answer["pilots"]] == [running.pilot_id]
    status, out, _ = run(capsys, "pilots", "--state", "lost", *as_user(matchmaker))
    assert (status, out) == (0, "no pilots match\n")


def test_pilots_page_with_limit_and_after(capsys, matchmaker):
    pilots = [ScriptedPilot(matchmaker, f"node{i}") for i in range(3)]
    status, out, _ = run(capsys, "pilots", "--limit", "2", *as_user(matchmaker))
    assert status == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:3]] == [str(p.pilot_id) for p in pilots[:2]]
    assert lines[3] == f"(more: add --after {pilots[1].pilot_id} to see the next 2)"
    answer = run_json(capsys, "pilots", "--limit", "2", "--after", str(pilots[1].pilot_id),
                      *as_user(matchmaker))
    assert [p["pilot_id"] for p in answer["pilots"]] == [pilots[2].pilot_id]


def test_pilots_of_an_unknown_site_is_one_sentence(capsys, matchmaker):
    status, out, err = run(capsys, "pilots", "--site", "site-z", *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err == ("floe pilots: there is no site named 'site-z'; an admin adds it with "
                   "`floe site add site-z`\n")


def test_sites_lists_each_site_with_its_running_pilots_and_the_attempts_they_run(
        capsys, matchmaker):
    admin = matchmaker._floe("user", "add", "carol", "--admin")["token"]
    assert matchmaker.api("POST", "/sites", {"name": "site-b"}, token=admin)[0] == 201
    matchmaker.submit(CONFIG)
    busy = ScriptedPilot(matchmaker)
    attempt = busy.take()
    ScriptedPilot(matchmaker, "node2")
    status, out, _ = run(capsys, "sites", *as_user(matchmaker))
    assert status == 0
    assert [line.split() for line in out.strip().splitlines()] == [
        ["SITE", "PILOTS", "RUNNING"], ["site-a", "2", "1"], ["site-b", "0", "0"]]
    assert run_json(capsys, "sites", *as_user(matchmaker)) == matchmaker.get("/sites")
    busy.report(attempt)  # RUNNING counts what runs now, not what ran
    _, out, _ = run(capsys, "sites", *as_user(matchmaker))
    assert out.splitlines()[1].split() == ["site-a", "2", "0"]


def test_users_lists_roles_shares_and_datasets(capsys, matchmaker):
    matchmaker.submit(CONFIG)
    status, out, _ = run(capsys, "users", *as_user(matchmaker))
    assert status == 0
    header, alice, root = [line.split() for line in out.strip().splitlines()]
    assert header == ["USER", "ROLE", "SHARE", "(WEIGHT)", "RECENT", "USAGE", "(CORE-H)",
                      "DATASETS"]
    assert (alice[:3], alice[4]) == (["alice", "user", "1.0"], "1")
    assert (root[:3], root[4]) == (["root", "admin", "1.0"], "0")
    assert run_json(capsys, "users", *as_user(matchmaker))["users"][0]["name"] == "alice"


def test_shares_set_each_users_share_against_recent_usage(capsys, matchmaker):
    matchmaker.submit(CONFIG)
    ScriptedPilot(matchmaker).run_one(usage={"wall_time": 3600.0})
    status, out, _ = run(capsys, "shares", *as_user(matchmaker))
    assert status == 0
    lines = out.strip().splitlines()
    # Each number's unit is in its column's header, and what each is below the table.
    assert re.split(r"\s{2,}", lines[0]) == ["USER", "SHARE (WEIGHT)", "% OF SHARES",
                                             "RECENT USAGE (CORE-H)", "% OF USAGE",
                                             "DELIVERED (CORE-H)"]
    alice, root = lines[1].split(), lines[2].split()
    assert alice == ["alice", "1.0", "50.0", "1.0", "100.0", "1.0"]  # an hour of one core
    assert root == ["root", "1.0", "50.0", "0.0", "0.0", "0.0"]
    assert lines[3] == ("(share: a weight, against the other users' shares; recent usage: "
                        "core-hours, a GPU counted as the server's gpu_weight cores, decaying "
                        "with a half-life of 1d; delivered: core-hours run since the matchmaker "
                        "started)")
    shares = run_json(capsys, "shares", *as_user(matchmaker))
    assert shares["shares"][0]["delivered_core_seconds"] == 3600.0
