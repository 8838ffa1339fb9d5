"""`floe suspend`, `resume`, `reset` and `priority` against a real matchmaker process: what
each does and says (human and --json), and the one sentence and failing exit status of an
action the matchmaker refuses: another user's dataset, a state that does not allow it."""

from __future__ import annotations

import pytest

from tests.cli.support import as_user, run, run_json, run_process
from tests.pilot.live import LiveMatchmaker
from tests.pilot.scripted import ScriptedPilot

CONFIG = {"jobs": 3, "max_retries": 0,
          "tasks": [{"name": "count", "modules": [{"command": "echo counting"}]}]}


@pytest.fixture
def dataset(matchmaker: LiveMatchmaker) -> int:
    """Alice's dataset of three tasks: one failed, two ready."""
    dataset = matchmaker.submit(CONFIG)
    ScriptedPilot(matchmaker).run_one(exit_code=1)
    return dataset


def states(matchmaker: LiveMatchmaker, dataset: int) -> list[str]:
    return sorted(matchmaker.states(dataset))


def test_suspend_holds_the_unfinished_tasks_and_resume_releases_them(
        capsys, matchmaker, dataset):
    status, out, err = run(capsys, "suspend", str(dataset), *as_user(matchmaker))
    assert status == 0, err
    assert out == f"dataset {dataset} suspended: 2 tasks changed; it is now suspended\n"
    assert states(matchmaker, dataset) == ["failed", "suspended", "suspended"]
    status, out, _ = run(capsys, "resume", str(dataset), *as_user(matchmaker))
    assert out == f"dataset {dataset} resumed: 2 tasks changed; it is now processing\n"
    assert states(matchmaker, dataset) == ["failed", "ready", "ready"]


def test_suspend_and_resume_json_are_the_api_answers(capsys, matchmaker, dataset):
    answer = run_json(capsys, "suspend", str(dataset), *as_user(matchmaker))
    assert answer["changed"] == 2 and answer["dataset"]["status"] == "suspended"
    assert answer["dataset"] == {k: v for k, v in matchmaker.get(f"/datasets/{dataset}").items()
                                 if k not in ("config", "config_versions", "events", "waiting")}
    answer = run_json(capsys, "resume", str(dataset), *as_user(matchmaker))
    assert answer["changed"] == 2 and answer["dataset"]["tasks"]["ready"] == 2


def test_reset_starts_failed_tasks_over_and_all_tasks_with_all(capsys, matchmaker, dataset):
    status, out, _ = run(capsys, "reset", str(dataset), *as_user(matchmaker))
    assert (status, out) == (0, f"dataset {dataset} reset: 1 task changed; it is now "
                                "processing\n")
    assert states(matchmaker, dataset) == ["ready"] * 3
    ScriptedPilot(matchmaker, "node2").run_one()
    answer = run_json(capsys, "reset", str(dataset), "--all", *as_user(matchmaker))
    assert answer["changed"] == 3 and answer["dataset"]["tasks"]["ready"] == 3
    assert [e["action"] for e in matchmaker.get(f"/datasets/{dataset}")["events"][:2]] == \
        ["reset all", "reset failed"]


def test_priority_changes_the_datasets_priority(capsys, matchmaker, dataset):
    status, out, _ = run(capsys, "priority", str(dataset), "2.5", *as_user(matchmaker))
    assert (status, out) == (0, f"dataset {dataset} now has priority 2.5\n")
    assert run_json(capsys, "priority", str(dataset), "7", *as_user(matchmaker))["priority"] == 7
    assert matchmaker.get(f"/datasets/{dataset}")["priority"] == 7


# The matchmaker names the field ("priority: must be ..."), the command too: said once.
@pytest.mark.parametrize(("value", "message"), [
    ("0", "must be greater than 0, got 0"),
    ("-2.5", "must be greater than 0, got -2.5"),
    ("1500", "must be at most 1,000, got 1,500")])
def test_a_priority_out_of_range_is_refused_with_the_allowed_range(capsys, matchmaker, dataset,
                                                                   value, message):
    status, out, err = run(capsys, "priority", str(dataset), value, *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err == f"floe priority: {message}\n"
    assert matchmaker.get(f"/datasets/{dataset}")["priority"] == 1


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--timeout", "-5", "'-5' is not a number of seconds, 0 or more"),
    ("--timeout", "inf", "'inf': leave the option out to have no limit"),
    ("--interval", "0", "'0': an interval must be at least 0.1 seconds"),
    ("--interval", "1e-9", "'1e-9': an interval must be at least 0.1 seconds"),
    ("--interval", "nan", "'nan' is not a number of seconds, 0 or more")])
def test_waits_seconds_are_numbers_it_can_wait(matchmaker, tmp_path, dataset, option, value, said):
    result = run_process(tmp_path, "wait", str(dataset), f"{option}={value}",
                         *as_user(matchmaker))
    assert result.returncode == 2
    assert result.stderr.endswith(f"floe wait: error: argument {option}: {said}\n")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_priority_that_is_no_number_is_refused_by_the_command_itself(matchmaker, tmp_path,
                                                                       dataset, value):
    result = run_process(tmp_path, "priority", str(dataset), value, *as_user(matchmaker))
    assert result.returncode == 2
    assert result.stderr.endswith(f"floe priority: error: argument priority: {value!r} is not "
                                  "a finite number: give one like 2.5\n")
    assert matchmaker.get(f"/datasets/{dataset}")["priority"] == 1


def test_any_priority_above_0_is_taken_as_a_submitted_dataset_may_have_it(capsys, matchmaker,
                                                                         dataset):
    status, out, _ = run(capsys, "priority", str(dataset), "0.0005", *as_user(matchmaker))
    assert (status, out) == (0, f"dataset {dataset} now has priority 0.0005\n")


@pytest.mark.parametrize("args", [["suspend"], ["resume"], ["reset"], ["reset", "--all"],
                                  ["priority", "{dataset}", "5"]])
def test_another_users_dataset_is_refused_in_one_sentence(matchmaker, tmp_path, dataset, args):
    bob = matchmaker._floe("user", "add", "bob")["token"]
    before = matchmaker.get(f"/datasets/{dataset}")
    command = [a.format(dataset=dataset) for a in args]
    if "{dataset}" not in args:
        command.insert(1, str(dataset))
    result = run_process(tmp_path, *command, *as_user(matchmaker, bob))
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr == (f"floe {args[0]}: bob may only change their own datasets; ask the "
                             "owner or an admin\n")
    after = matchmaker.get(f"/datasets/{dataset}")
    assert (after["status"], after["priority"], after["tasks"]) == \
        (before["status"], before["priority"], before["tasks"])


def test_an_admin_may_steer_anyones_dataset(capsys, matchmaker, dataset):
    admin = matchmaker._floe("user", "add", "carol", "--admin")["token"]
    status, out, _ = run(capsys, "suspend", str(dataset), *as_user(matchmaker, admin))
    assert status == 0 and "it is now suspended" in out
    assert matchmaker.get(f"/datasets/{dataset}")["events"][0]["user"] == "carol"


def test_an_action_the_datasets_state_does_not_allow_is_one_sentence(capsys, matchmaker, dataset):
    status, out, err = run(capsys, "resume", str(dataset), *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err == f"floe resume: dataset {dataset} is not suspended (it is processing)\n"
    run(capsys, "suspend", str(dataset), *as_user(matchmaker))
    status, _, err = run(capsys, "reset", str(dataset), *as_user(matchmaker))
    assert status == 1
    assert err == f"floe reset: dataset {dataset} is suspended; resume it before resetting\n"
