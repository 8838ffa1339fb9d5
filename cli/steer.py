"""`floe suspend`, `resume`, `reset`, `priority`, `add-jobs` and `abort`: the actions a
dataset's owner (or an admin) takes on it. Anyone else is refused by the matchmaker, and gets
its sentence."""

from __future__ import annotations

import argparse
from typing import Any

from .command import Command, Fetch, Show, add_dataset, subcommands
from .http import Client


def _reset_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--all", action="store_true",
                        help="start every task over, voiding running attempts (default: only "
                             "failed tasks)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--job", type=int, metavar="N", help="only the tasks of job N")
    only.add_argument("--task", type=int, metavar="ID", help="only the task with this id")


def _add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("jobs", type=int, help="how many jobs to add (the next job indices)")


def _priority_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("priority", type=float,
                        help="the new priority, greater than 0 and at most 1000 (a new "
                             "dataset has 1); it weighs the dataset against its owner's other "
                             "datasets")


def _action(verb: str) -> Fetch:
    def fetch(client: Client, args: argparse.Namespace) -> Any:
        return client.post(f"/api/v1/datasets/{args.dataset}/{verb}")
    return fetch


def _reset_fetch(client: Client, args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"scope": "all" if args.all else "failed"}
    if args.job is not None:
        body["job"] = args.job
    if args.task is not None:
        body["task"] = args.task
    return client.post(f"/api/v1/datasets/{args.dataset}/reset", body)


def _add_jobs_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.post(f"/api/v1/datasets/{args.dataset}/jobs", {"jobs": args.jobs})


def _add_jobs_show(answer: Any, args: argparse.Namespace) -> None:
    dataset = answer["dataset"]
    print(f"dataset {dataset['id']} now has {answer['jobs']:,} jobs ({args.jobs:,} added, "
          f"created in the background); it is {dataset['status']}")


def _priority_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.put(f"/api/v1/datasets/{args.dataset}/priority", {"priority": args.priority})


def _changed(done: str) -> Show:
    def show(answer: Any, args: argparse.Namespace) -> None:
        dataset, changed = answer["dataset"], answer["changed"]
        hint = "" if changed or done != "reset" or getattr(args, "all", True) else \
            " (without --all only failed tasks are reset)"
        print(f"dataset {dataset['id']} {done}: {changed} task{'' if changed == 1 else 's'} "
              f"changed; it is now {dataset['status']}{hint}")
    return show


def _priority_show(dataset: Any, args: argparse.Namespace) -> None:
    print(f"dataset {dataset['id']} now has priority {dataset['priority']:g}")


SUBCOMMANDS = subcommands({
    "suspend": Command("hold a dataset's unfinished tasks (voids running attempts)",
                       add_dataset, _action("suspend"), _changed("suspended")),
    "resume": Command("release a suspended dataset", add_dataset, _action("resume"),
                      _changed("resumed")),
    "reset": Command("start a dataset's failed tasks (or --all) over, or one job's or task's",
                     _reset_arguments, _reset_fetch, _changed("reset")),
    "add-jobs": Command("add jobs to a dataset (an ended one runs again)", _add_jobs_arguments,
                        _add_jobs_fetch, _add_jobs_show),
    "abort": Command("end a dataset: its unfinished tasks fail, running attempts are stopped, "
                     "jobs not yet created never are", add_dataset, _action("abort"),
                     _changed("aborted")),
    "priority": Command("change a dataset's priority", _priority_arguments, _priority_fetch,
                        _priority_show),
})
