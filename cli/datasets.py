"""`floe datasets`, `jobs`, `tasks`, `attempts` and `logs`: from every dataset down to one
attempt's output, as the dataset and task pages show them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from floe.config.resources import format_duration, format_size
from floe.config.schema import counted
from floe.config.states import JOB_STATES, AttemptState, ErrorClass, TaskState

from .client import STATES
from .command import Command, add_dataset, add_paging, age, moment, next_page, subcommands, table
from .http import Client, ClientError


def _datasets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--owner", help="only this user's datasets")
    parser.add_argument("--status", choices=("processing", "suspended", "complete", "failed",
                                             "open", "ended"),
                        help="only datasets in this status (open: processing or suspended; "
                             "ended: complete or failed)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="only the latest N (at most 1000)")


def _datasets_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.get("/api/v1/datasets", owner=args.owner, status=args.status,
                      limit=args.limit)


def _status(dataset: dict[str, Any]) -> str:
    """Its status, and whether its attempts are archived (or being archived)."""
    if dataset.get("archived"):
        return f"{dataset['status']}, archived"
    return f"{dataset['status']}, archiving" if dataset.get("archiving") else dataset["status"]


def _datasets_show(data: Any, args: argparse.Namespace) -> None:
    if not data["datasets"]:
        print("no datasets match" if args.owner or args.status else
              "no datasets yet; submit one with `floe submit CONFIG.json`")
        return
    print(table(["ID", "OWNER", "STATUS", "PRIORITY", "JOBS", *(s.upper() for s in STATES),
                 "AGE", "DESCRIPTION"],
                [[d["id"], d["owner"], _status(d), d["priority"], d["jobs"],
                  *(d["tasks"][s] for s in STATES), age(d["created"]), d["description"][:40]]
                 for d in data["datasets"]]))
    if data.get("more"):
        print(f"(and {data['more']:,} older: a larger --limit, up to 1000, or none lists them)")


def _jobs_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    add_paging(parser, "jobs")


def _jobs_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.get(f"/api/v1/datasets/{args.dataset}/jobs", state=args.state,
                      after=args.after, limit=args.limit)


def _jobs_show(data: Any, args: argparse.Namespace) -> None:
    if not data["jobs"]:
        print(f"dataset {args.dataset} has no jobs that match")
        return
    print(table(["JOB", "STATE"], [[j["job"], j["state"]] for j in data["jobs"]]))
    next_page(args, data["next"])


def _tasks_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--state", choices=STATES, help="only tasks in this state")
    parser.add_argument("--task", metavar="NAME", help="only the tasks of this name")
    parser.add_argument("--job", type=int, metavar="N", help="only the tasks of job N")
    add_paging(parser, "tasks")


def _tasks_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.get(f"/api/v1/datasets/{args.dataset}/tasks", state=args.state,
                      task=args.task, job=args.job, after=args.after, limit=args.limit)


def _tasks_show(data: Any, args: argparse.Namespace) -> None:
    if not data["tasks"]:
        print(f"dataset {args.dataset} has no tasks that match")
        return
    print(table(["ID", "JOB", "TASK", "STATE", "FAILURES", "LOST", "UPDATED", "WHY"],
                [[t["task_id"], t["job"], t["task"], t["state"], t["failures"], t["lost"],
                  age(t["updated"]), t.get("why") or t["reason"] or ""] for t in data["tasks"]]))
    next_page(args, data["next"])


def _task_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", type=int, help="the task's id (see `floe tasks DATASET`)")


def _attempts_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.get(f"/api/v1/tasks/{args.task}")


def _size(value: int | None) -> str | None:
    return format_size(value) if value else None


def _attempts_show(task: dict[str, Any], args: argparse.Namespace) -> None:
    needs = task["requirements"]
    print(f"task {task['task_id']} ({task['task']} of job {task['job']}, dataset "
          f"{task['dataset']}): {task['state']}, {counted(task['failures'], 'failure')}, "
          f"{task['lost']} lost; needs {counted(needs['cpus'], 'CPU')}, "
          f"{format_size(needs['memory'])} memory, {counted(needs['gpus'], 'GPU')}, "
          f"{format_duration(needs['walltime'])}")
    if task.get("why"):
        print(f"why it waits: {task['why']}")
    if not task["attempts"]:
        print(f"no attempts: it {_never_ran(task)}" if _will_not_run(task) else "no attempts yet")
        return
    rows = []
    for a in task["attempts"]:
        wall = a["used"]["wall_time"]
        rows.append([a["attempt_id"], a["state"], a["site"], a["host"], a["pilot_id"],
                     moment(a["started"]), format_duration(wall) if wall else None,
                     a["requested"]["cpus"], _size(a["requested"]["memory"]),
                     _size(a["used"]["peak_memory"]), a["exit_code"], a["error_class"],
                     (a["error_message"] or "")[:60]])
    headers = ["ATTEMPT", "STATE", "SITE", "HOST", "PILOT", "STARTED", "WALL", "CPUS",
               "MEMORY", "PEAK", "EXIT", "ERROR", "MESSAGE"]
    versions = [a.get("config_version") or 1 for a in task["attempts"]]
    if any(v > 1 for v in versions):  # its dataset's steering changed after submission
        headers.insert(2, "CONFIG")
        for row, version in zip(rows, versions, strict=True):
            row.insert(2, version)
    print(table(headers, rows))
    for a in task["attempts"]:
        for warning in a.get("warnings") or ():
            print(f"attempt {a['attempt_id']}: warning: {warning}")


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    _task_argument(parser)
    parser.add_argument("--stream", choices=("stdout", "stderr"), default="stdout",
                        help="which output (default: stdout)")
    parser.add_argument("--attempt", type=int, metavar="ID",
                        help="this attempt's log (default: the task's latest attempt, and "
                             "where that wrote nothing, the stderr of the last that failed; "
                             "see `floe attempts TASK`)")


def _will_not_run(task: dict[str, Any]) -> bool:
    """A task that ended without an attempt: failed because a task it depends on failed (or
    its dataset was aborted)."""
    return task["state"] == TaskState.FAILED and not task["attempts"]


def _never_ran(task: dict[str, Any]) -> str:
    """Why a task that ended without an attempt never ran, and how to run it, as a sentence's
    end: "never ran (dependency gen failed); ..."."""
    why = task.get("reason") or "it was failed before any attempt"
    return (f"never ran ({why}) and will not unless started over: `floe reset "
            f"{task['dataset']} --job {task['job']}` starts its job's failed tasks over, this "
            "one with them")


def _logs_fetch(client: Client, args: argparse.Namespace) -> Any:
    task = client.get(f"/api/v1/tasks/{args.task}")
    attempts = task["attempts"]
    states = {a["attempt_id"]: a["state"] for a in attempts}
    classes = {a["attempt_id"]: a.get("error_class") for a in attempts}
    warnings = {a["attempt_id"]: a.get("warnings") or [] for a in attempts}
    if _will_not_run(task):
        raise ClientError(f"task {args.task} has no logs: it {_never_ran(task)}")
    if not states:
        raise ClientError(f"task {args.task} has not run yet, so it has no logs")
    attempt = list(states)[-1] if args.attempt is None else args.attempt
    if attempt not in states:
        raise ClientError(f"task {args.task} has no attempt {attempt} (its attempts: "
                          f"{', '.join(map(str, states))})")
    text = client.request("GET", f"/api/v1/attempts/{attempt}/logs/{args.stream}", raw=True)
    data = {"task_id": args.task, "attempt_id": attempt, "state": states[attempt],
            "error_class": classes[attempt], "warnings": warnings[attempt],
            "stream": args.stream, "text": text}
    failed = _last_failure(client, attempts, attempt, args.stream) \
        if not text and args.attempt is None else None
    if failed:
        data["failed"] = failed
    return data


def _last_failure(client: Client, attempts: list[dict[str, Any]], latest: int,
                  stream: str) -> dict[str, Any] | None:
    """The task's last failed attempt with its stderr, where it wrote some: what a user asking
    for the log of a retried task needs when the latest attempt wrote nothing (yet)."""
    failed = [a for a in attempts if a["state"] == AttemptState.FAILED]
    if not failed or (failed[-1]["attempt_id"] == latest and stream == "stderr"):
        return None
    attempt = failed[-1]
    text = client.request("GET", f"/api/v1/attempts/{attempt['attempt_id']}/logs/stderr",
                          raw=True)
    if not text:
        return None
    return {"attempt_id": attempt["attempt_id"], "error_class": attempt["error_class"],
            "exit_code": attempt["exit_code"], "error_message": attempt["error_message"],
            "stream": "stderr", "text": text}


def _failure(attempt: dict[str, Any]) -> str:
    """How an attempt failed, in a few words: "task_error, exit 2: fit diverged"."""
    words = [attempt["error_class"] or "failed"]
    if attempt["exit_code"] is not None:
        words.append(f"exit {attempt['exit_code']}")
    said = ", ".join(words)
    message = (attempt["error_message"] or "").strip().splitlines()
    return f"{said}: {message[0][:100]}" if message else said


def _logs_show(data: Any, args: argparse.Namespace) -> None:
    # Said on stderr: stdout stays the log itself, for pipes.
    for warning in data.get("warnings") or ():
        print(f"attempt {data['attempt_id']}: warning: {warning}", file=sys.stderr)
    text = data["text"] or _empty(data)
    sys.stdout.write(text)
    if text and not text.endswith("\n"):
        sys.stdout.write("\n")


def _empty(data: dict[str, Any]) -> str:
    """Says on stderr why an attempt's log is empty, and which earlier failure is shown
    instead; the text to show ("" for none)."""
    attempt, failed = data["attempt_id"], data.get("failed")
    latest = f"attempt {attempt}{' (the latest)' if failed else ''}"
    if data["state"] == AttemptState.PROCESSING:
        said = (f"{latest} is still running; the pilot uploads its {data['stream']} when it "
                f"ends (see `floe attempts {data['task_id']}`)")
    elif data.get("error_class") == ErrorClass.NOT_RUN.value:
        said = (f"{latest} never ran: its pilot gave it back unstarted (not_run; see `floe "
                f"attempts {data['task_id']}`)")
    else:
        said = f"{latest} wrote nothing to {data['stream']}"
    if failed:
        which = "it" if failed["attempt_id"] == attempt else f"attempt {failed['attempt_id']}"
        said += f"; {which} failed ({_failure(failed)}) and wrote this to its stderr:"
    print(said, file=sys.stderr)
    return failed["text"] if failed else ""


SUBCOMMANDS = subcommands({
    "datasets": Command("list datasets with their tasks in each state", _datasets_arguments,
                        _datasets_fetch, _datasets_show),
    "jobs": Command("list a dataset's jobs", _jobs_arguments, _jobs_fetch, _jobs_show),
    "tasks": Command("list a dataset's tasks, by state and task name", _tasks_arguments,
                     _tasks_fetch, _tasks_show),
    "attempts": Command("show a task and every attempt to run it", _task_argument,
                        _attempts_fetch, _attempts_show),
    "logs": Command("print the stdout or stderr of a task's attempt", _logs_arguments,
                    _logs_fetch, _logs_show),
})
