"""`floe datasets`, `jobs`, `tasks`, `attempts` and `logs` against a real matchmaker process,
after a scripted pilot has run one task and failed another: tables, filters, paging, --json, and
the sentences for what is not there."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from floe.config.resources import GIB
from tests.cli.support import as_user, run, run_json
from tests.pilot.live import LiveMatchmaker
from tests.pilot.scripted import ScriptedPilot

CONFIG = {
    "description": "generate then fit",
    "jobs": 3,
    "max_retries": 0,
    "tasks": [{"name": "gen", "modules": [{"command": "echo gen"}]},
              {"name": "fit", "depends": ["gen"], "modules": [{"command": "echo fit"}]}],
}


@dataclass
class Run:
    dataset: int
    done_task: int
    done_attempt: int
    failed_task: int
    failed_attempt: int


@pytest.fixture
def ran(matchmaker: LiveMatchmaker) -> Run:
    """CONFIG submitted by alice; one task complete (with its stdout uploaded), one failed."""
    dataset = matchmaker.submit(CONFIG)
    pilot = ScriptedPilot(matchmaker)
    done = pilot.take()
    pilot.upload_log(done, "stdout", "generated 100 events\n")
    pilot.report(done, usage={"wall_time": 3.0, "peak_memory": GIB},
                 stdout_tail="generated 100 events\n")
    failed = pilot.take()
    pilot.report(failed, exit_code=2, error_message="fit diverged",
                 stderr_tail="Traceback: fit diverged\n")
    return Run(dataset, done["task_id"], done["id"], failed["task_id"], failed["id"])


def rows(out: str) -> list[list[str]]:
    """A table's lines split into cells (for tables whose cells have no spaces)."""
    return [line.split() for line in out.strip().splitlines()]


def test_datasets_shows_each_dataset_with_its_tasks_in_each_state(capsys, matchmaker, ran):
    status, out, err = run(capsys, "datasets", *as_user(matchmaker))
    assert status == 0, err
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "OWNER", "STATUS", "PRIORITY", "JOBS", "WAITING", "READY",
                              "PROCESSING", "COMPLETE", "FAILED", "SUSPENDED", "AGE",
                              "DESCRIPTION"]
    counts = matchmaker.get(f"/datasets/{ran.dataset}")["tasks"]
    assert row.split()[:11] == [str(ran.dataset), "alice", "processing", "1.0", "3",
                                *(str(counts[s]) for s in ("waiting", "ready", "processing",
                                                           "complete", "failed",
                                                           "suspended"))]
    assert row.endswith("generate then fit")
    # Columns line up: each header starts where its column's cells do.
    assert header.index("OWNER") == row.index("alice")


def test_datasets_filters_by_owner_and_status_and_json_is_the_api_answer(
        capsys, matchmaker, ran):
    assert run_json(capsys, "datasets", *as_user(matchmaker)) == matchmaker.get("/datasets")
    assert [d["id"] for d in run_json(capsys, "datasets", "--owner", "alice",
                                      *as_user(matchmaker))["datasets"]] == [ran.dataset]
    status, out, _ = run(capsys, "datasets", "--owner", "bob", *as_user(matchmaker))
    assert (status, out) == (0, "no datasets match\n")
    status, out, _ = run(capsys, "datasets", "--status", "complete", *as_user(matchmaker))
    assert (status, out) == (0, "no datasets match\n")


def test_jobs_lists_a_page_of_jobs_and_says_how_to_see_the_next(capsys, matchmaker, ran):
    states = [j["state"] for j in matchmaker.get(f"/datasets/{ran.dataset}/jobs")["jobs"]]
    status, out, _ = run(capsys, "jobs", str(ran.dataset), "--limit", "2", *as_user(matchmaker))
    assert status == 0
    assert rows(out) == [["JOB", "STATE"], ["0", states[0]], ["1", states[1]],
                         ["(more:", "add", "--after", "1", "to", "see", "the", "next", "2)"]]
    status, out, _ = run(capsys, "jobs", str(ran.dataset), "--limit", "2", "--after", "1",
                         *as_user(matchmaker))
    assert rows(out) == [["JOB", "STATE"], ["2", states[2]]]
    page = run_json(capsys, "jobs", str(ran.dataset), "--limit", "2", *as_user(matchmaker))
    assert page == {"jobs": [{"job": 0, "state": states[0]}, {"job": 1, "state": states[1]}],
                    "next": 1}


def test_jobs_filters_by_state(capsys, matchmaker, ran):
    status, out, _ = run(capsys, "jobs", str(ran.dataset), "--state", "failed",
                         *as_user(matchmaker))
    assert status == 0
    failed_job = matchmaker.get(f"/tasks/{ran.failed_task}")["job"]
    assert rows(out) == [["JOB", "STATE"], [str(failed_job), "failed"]]
    status, out, _ = run(capsys, "jobs", str(ran.dataset), "--state", "suspended",
                         *as_user(matchmaker))
    assert (status, out) == (0, f"dataset {ran.dataset} has no jobs that match\n")


def test_tasks_filters_by_state_and_task_name(capsys, matchmaker, ran):
    status, out, _ = run(capsys, "tasks", str(ran.dataset), "--state", "complete",
                         *as_user(matchmaker))
    assert status == 0
    header, row = rows(out)
    assert header == ["ID", "JOB", "TASK", "STATE", "FAILURES", "LOST", "UPDATED", "WHY"]
    task = matchmaker.get(f"/tasks/{ran.done_task}")
    assert row[:6] == [str(ran.done_task), str(task["job"]), task["task"], "complete", "0", "0"]
    status, out, _ = run(capsys, "tasks", str(ran.dataset), "--state", "failed",
                         *as_user(matchmaker))
    failed = [line for line in out.splitlines() if line.split()[0] == str(ran.failed_task)]
    assert failed and "fit diverged" in failed[0]
    names = {line[2] for line in rows(run(capsys, "tasks", str(ran.dataset), "--task", "fit",
                                          *as_user(matchmaker))[1])[1:]}
    assert names == {"fit"}


def test_tasks_json_pages_as_the_api_does(capsys, matchmaker, ran):
    page = run_json(capsys, "tasks", str(ran.dataset), "--limit", "4", *as_user(matchmaker))
    assert page == matchmaker.get(f"/datasets/{ran.dataset}/tasks?limit=4")
    assert len(page["tasks"]) == 4 and page["next"] == page["tasks"][-1]["task_id"]
    rest = run_json(capsys, "tasks", str(ran.dataset), "--after", str(page["next"]),
                    *as_user(matchmaker))
    assert len(rest["tasks"]) == 2 and rest["next"] is None
    status, out, _ = run(capsys, "tasks", str(ran.dataset), "--limit", "4", *as_user(matchmaker))
    assert status == 0
    assert out.splitlines()[-1] == f"(more: add --after {page['next']} to see the next 4)"


def test_tasks_of_an_unknown_task_name_is_one_sentence(capsys, matchmaker, ran):
    status, out, err = run(capsys, "tasks", str(ran.dataset), "--task", "plot",
                           *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err == (f"floe tasks: --task: dataset {ran.dataset} has no task named 'plot' (it has "
                   "gen, fit)\n")


def test_attempts_shows_the_task_and_each_attempt(capsys, matchmaker, ran):
    status, out, _ = run(capsys, "attempts", str(ran.failed_task), *as_user(matchmaker))
    assert status == 0
    task = matchmaker.get(f"/tasks/{ran.failed_task}")
    summary, header, row = out.strip().splitlines()
    assert summary == (f"task {ran.failed_task} ({task['task']} of job {task['job']}, dataset "
                       f"{ran.dataset}): failed, 1 failure, 0 lost; needs 1 CPU, 1GiB memory, "
                       "0 GPUs, 1h")
    assert header.split() == ["ATTEMPT", "STATE", "SITE", "HOST", "PILOT", "STARTED", "WALL",
                              "CPUS", "MEMORY", "PEAK", "EXIT", "ERROR", "MESSAGE"]
    cells = row.split()
    assert cells[:5] == [str(ran.failed_attempt), "failed", "site-a", "node1", "1"]
    assert row.endswith("2  task_error  fit diverged")
    status, out, _ = run(capsys, "attempts", str(ran.done_task), *as_user(matchmaker))
    row = out.strip().splitlines()[-1]
    assert "  3s  " in row and "1GiB" in row  # wall time and peak memory as reported


def test_attempts_json_is_the_task_with_its_attempts(capsys, matchmaker, ran):
    task = run_json(capsys, "attempts", str(ran.failed_task), *as_user(matchmaker))
    assert task == matchmaker.get(f"/tasks/{ran.failed_task}")
    [attempt] = task["attempts"]
    assert attempt["attempt_id"] == ran.failed_attempt
    assert attempt["error_message"] == "fit diverged"


def test_attempts_of_a_task_that_never_ran(capsys, matchmaker, ran):
    waiting = next(t["task_id"] for t in matchmaker.get(f"/datasets/{ran.dataset}/tasks")
                   ["tasks"] if t["state"] in ("ready", "waiting"))
    status, out, _ = run(capsys, "attempts", str(waiting), *as_user(matchmaker))
    assert status == 0 and out.strip().endswith("no attempts yet")


def test_logs_prints_the_latest_attempts_stdout_or_stderr(capsys, matchmaker, ran):
    status, out, _ = run(capsys, "logs", str(ran.done_task), *as_user(matchmaker))
    assert (status, out) == (0, "generated 100 events\n")
    status, out, _ = run(capsys, "logs", str(ran.failed_task), "--stream", "stderr",
                         *as_user(matchmaker))
    assert (status, out) == (0, "Traceback: fit diverged\n")
    status, out, _ = run(capsys, "logs", str(ran.failed_task), "--attempt",
                         str(ran.failed_attempt), "--stream", "stderr", *as_user(matchmaker))
    assert (status, out) == (0, "Traceback: fit diverged\n")
    assert run_json(capsys, "logs", str(ran.done_task), *as_user(matchmaker)) == {
        "task_id": ran.done_task, "attempt_id": ran.done_attempt, "state": "complete",
        "error_class": None, "warnings": [], "stream": "stdout",
        "text": "generated 100 events\n"}
    status, out, err = run(capsys, "logs", str(ran.done_task), "--stream", "stderr",
                           *as_user(matchmaker))
    assert (status, out) == (0, "")  # an empty log is said on stderr, out of a pipe's way
    assert err == f"attempt {ran.done_attempt} wrote nothing to stderr\n"


def test_what_a_report_left_out_is_said_by_attempts_and_logs(capsys, matchmaker):
    matchmaker.submit({"jobs": 1, "tasks": [{"name": "photons", "modules": [
        {"command": ["true"]}]}]})
    attempt = ScriptedPilot(matchmaker).run_one(
        0, stdout_tail="done\n", statistics={"events": 3, "gpu": "NVIDIA H200"})
    task = str(attempt["task_id"])
    left_out = "statistics: 'gpu' is \"NVIDIA H200\", not a number in range: left out"
    status, out, _ = run(capsys, "attempts", task, *as_user(matchmaker))
    assert status == 0 and f"attempt {attempt['id']}: warning: {left_out}\n" in out
    status, out, err = run(capsys, "logs", task, *as_user(matchmaker))
    assert (status, out) == (0, "done\n")  # the log alone on stdout, for pipes
    assert err == f"attempt {attempt['id']}: warning: {left_out}\n"


def test_logs_of_an_attempt_given_back_unstarted_say_that_it_never_ran(capsys, matchmaker):
    matchmaker.submit({"jobs": 1, "tasks": [{"name": "work", "modules": [
        {"command": ["true"]}]}]})
    pilot = ScriptedPilot(matchmaker)
    attempt = pilot.take()
    pilot.report(attempt, None, error_class="not_run",
                 error_message="the pilot was stopped (SIGTERM received) before it ran it")
    status, out, err = run(capsys, "logs", str(attempt["task_id"]), *as_user(matchmaker))
    assert (status, out) == (0, "")
    assert err == (f"attempt {attempt['id']} never ran: its pilot gave it back unstarted "
                   f"(not_run; see `floe attempts {attempt['task_id']}`)\n")


def test_logs_of_a_running_attempt_say_that_it_is_running_not_that_it_wrote_nothing(
        capsys, matchmaker, ran):
    running = ScriptedPilot(matchmaker, "node2").take()
    status, out, err = run(capsys, "logs", str(running["task_id"]), *as_user(matchmaker))
    assert (status, out) == (0, "")
    assert err == (f"attempt {running['id']} is still running; the pilot uploads its stdout "
                   f"when it ends (see `floe attempts {running['task_id']}`)\n")


def test_logs_of_another_tasks_attempt_or_of_a_task_not_run_are_refused(
        capsys, matchmaker, ran):
    status, out, err = run(capsys, "logs", str(ran.done_task), "--attempt",
                           str(ran.failed_attempt), *as_user(matchmaker))
    assert status == 1 and out == ""
    assert err == (f"floe logs: task {ran.done_task} has no attempt {ran.failed_attempt} "
                   f"(its attempts: {ran.done_attempt})\n")
    waiting = next(t["task_id"] for t in matchmaker.get(f"/datasets/{ran.dataset}/tasks")
                   ["tasks"] if t["state"] in ("ready", "waiting"))
    status, _, err = run(capsys, "logs", str(waiting), *as_user(matchmaker))
    assert status == 1
    assert err == f"floe logs: task {waiting} has not run yet, so it has no logs\n"


@pytest.mark.parametrize("args", [["jobs", "99"], ["tasks", "99"], ["attempts", "9999"],
                                  ["logs", "9999"]])
def test_what_does_not_exist_is_named_in_one_sentence(capsys, matchmaker, args):
    status, out, err = run(capsys, *args, *as_user(matchmaker))
    assert status == 1 and out == ""
    what = "dataset" if args[0] in ("jobs", "tasks") else "task"
    hint = "" if what == "dataset" else \
        ": a task's id is unique across datasets (`floe tasks DATASET` lists a dataset's)"
    assert err == f"floe {args[0]}: there is no {what} {args[1]}{hint}\n"


def test_logs_of_a_retried_task_show_the_last_failures_stderr_when_the_latest_wrote_nothing(
        capsys, matchmaker):
    matchmaker.submit({"jobs": 1, "max_retries": 2, "tasks": [{"name": "fit", "modules": [
        {"command": ["true"]}]}]})
    pilot = ScriptedPilot(matchmaker)
    first = pilot.take()
    pilot.report(first, exit_code=3, error_message="fit diverged",
                 stderr_tail="Traceback: fit diverged\n")
    latest = pilot.take()  # the retry, running: nothing uploaded yet
    task = str(latest["task_id"])
    failure = (f"attempt {first['id']} failed (task_error, exit 3: fit diverged) and wrote "
               "this to its stderr:\n")
    status, out, err = run(capsys, "logs", task, *as_user(matchmaker))
    assert (status, out) == (0, "Traceback: fit diverged\n")
    assert err == (f"attempt {latest['id']} (the latest) is still running; the pilot uploads "
                   f"its stdout when it ends (see `floe attempts {task}`); {failure}")
    pilot.report(latest)  # complete, and it wrote nothing
    status, out, err = run(capsys, "logs", task, *as_user(matchmaker))
    assert (status, out) == (0, "Traceback: fit diverged\n")
    assert err == f"attempt {latest['id']} (the latest) wrote nothing to stdout; {failure}"
    assert run_json(capsys, "logs", task, *as_user(matchmaker))["failed"]["attempt_id"] == \
        first["id"]
    # An attempt asked for by its id shows its own log only.
    status, out, err = run(capsys, "logs", task, "--attempt", str(latest["id"]),
                           *as_user(matchmaker))
    assert (status, out, err) == (0, "", f"attempt {latest['id']} wrote nothing to stdout\n")


@pytest.mark.parametrize(("args", "said"), [
    (["--limit", "0"], "--limit: must be at least 1, got 0"),
    (["--job", "-1"], "--job: must be at least 0, got -1")])
def test_a_refused_option_is_named_as_it_is_typed(capsys, matchmaker, ran, args, said):
    status, out, err = run(capsys, "tasks", str(ran.dataset), *args, *as_user(matchmaker))
    assert (status, out, err) == (1, "", f"floe tasks: {said}\n")


def test_a_task_failed_because_its_dependency_failed_says_it_never_ran_and_how_to_rerun(
        capsys, matchmaker):
    dataset = matchmaker.submit({**CONFIG, "jobs": 2})
    pilot = ScriptedPilot(matchmaker)
    while (given := pilot.ask()) is not None:  # job 1's gen fails, everything else completes
        failing = (given["job"], given["task"]) == (1, "gen")
        pilot.report(given, exit_code=1 if failing else 0, error_message="no input")
        if failing:
            gen = given
    [fit] = [t for t in matchmaker.get(f"/datasets/{dataset}/tasks")["tasks"]
             if t["task_id"] == gen["task_id"] + 1]
    assert fit["state"] == "failed"
    advice = (f"never ran (dependency gen failed) and will not unless started over: "
              f"`floe reset {dataset} --job 1` starts its job's failed tasks over, this one "
              "with them")
    status, _, err = run(capsys, "logs", str(fit["task_id"]), *as_user(matchmaker))
    assert status == 1
    assert err == f"floe logs: task {fit['task_id']} has no logs: it {advice}\n"
    status, out, _ = run(capsys, "attempts", str(fit["task_id"]), *as_user(matchmaker))
    assert status == 0 and out.strip().endswith(f"no attempts: it {advice}")
    # Started over alone, it would wait for its failed dependency for ever: refused.
    status, _, err = run(capsys, "reset", str(dataset), "--task", str(fit["task_id"]),
                         *as_user(matchmaker))
    assert status == 1
    assert err.endswith(f"task {fit['task_id']} depends on task {gen['task_id']} (gen), which "
                        "failed, and would wait for it for ever: start both over with the "
                        f"failed tasks of their job (`floe reset {dataset} --job 1`)\n"), err
    # The advice works: started over, it runs once its dependency has.
    status, _, err = run(capsys, "reset", str(dataset), "--job", "1", *as_user(matchmaker))
    assert status == 0, err
    again = pilot.take()
    assert again["task_id"] == gen["task_id"]
    pilot.report(again)
    assert pilot.take()["task_id"] == fit["task_id"]
