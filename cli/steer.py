"""`floe suspend`, `resume`, `reset`, `priority`, `add-jobs`, `steering`, `abort`, `archive` and
`delete`: the actions a dataset's owner (or an admin) takes on it. Anyone else is refused by the
matchmaker, and gets its sentence."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .command import Command, Fetch, Show, add_dataset, number, subcommands
from .http import Client, ClientError


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
    parser.add_argument("priority", type=number,
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


def _steering_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("values", nargs="*", metavar="NAME=VALUE",
                        help="steering values to change for the jobs not yet created (VALUE is "
                             "read as JSON where it is JSON, else as text); none: show the "
                             "dataset's config versions")


def _steering_fetch(client: Client, args: argparse.Namespace) -> Any:
    if not args.values:
        return {"versions": client.get(f"/api/v1/datasets/{args.dataset}")["config_versions"]}
    values: dict[str, Any] = {}
    for given in args.values:
        name, equals, text = given.partition("=")
        if not equals or not name:
            raise ClientError(f"{given!r} is not NAME=VALUE (for example seed=42 or "
                              "gcd=\"/data/gcd-2.i3\")", 2)
        if name in values:
            raise ClientError(f"{name} is given twice; give each steering value once", 2)
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text
    return client.post(f"/api/v1/datasets/{args.dataset}/steering", {"steering": values})


def _steering_show(answer: Any, args: argparse.Namespace) -> None:
    if "versions" in answer:
        versions = answer["versions"]
        for version in versions:
            changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in version["changed"].items())
            print(f"version {version['version']}: from job {version['first_job']:,}"
                  + (f", {changed}" if changed else " (as submitted)")
                  + (f", by {version['by']}" if version["by"] and version["version"] > 1
                     else "") + (" (current: new jobs get it)" if len(versions) > 1 and
                                 version is versions[-1] else ""))
        return
    used = answer["jobs_using_it"]
    print(f"dataset {answer['dataset']['id']}: steering version {answer['version']} applies "
          f"from job {answer['first_job']:,} on ("
          + (f"{used:,} of its jobs, not created yet" if used else
             "every job is created already: jobs added with floe add-jobs use it") + ")")


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--yes", action="store_true",
                        help="delete for good (without it nothing is deleted and floe says what "
                             "would be)")


def _delete_fetch(client: Client, args: argparse.Namespace) -> Any:
    if not args.yes:
        dataset = client.get(f"/api/v1/datasets/{args.dataset}")
        if dataset["status"] not in ("complete", "failed") \
                or dataset["jobs_created"] < dataset["jobs"]:
            raise ClientError(f"dataset {args.dataset} is {dataset['status']}: only an ended "
                              f"dataset can be deleted; abort it first (floe abort "
                              f"{args.dataset})")
        keep = "" if dataset.get("archived") else \
            " (`floe archive` keeps them readable instead)"
        raise ClientError(f"this removes dataset {args.dataset} and every attempt, log and "
                          f"statistic of it for good{keep}; run again with --yes to delete it",
                          2)
    return client.request("DELETE", f"/api/v1/datasets/{args.dataset}")


def _delete_show(answer: Any, args: argparse.Namespace) -> None:
    row = answer["deleted"]
    print(f"dataset {row['dataset_id']} deleted, with its {row['attempts']:,} attempts")


ARCHIVE_POLL = 0.5
"""Seconds between two looks at a dataset being archived."""


def _archive_fetch(client: Client, args: argparse.Namespace) -> Any:
    """Start the archive, and wait until the matchmaker has made it (Ctrl-C stops waiting, not
    the archive)."""
    dataset = client.post(f"/api/v1/datasets/{args.dataset}/archive")
    while dataset["archiving"]:
        time.sleep(ARCHIVE_POLL)
        dataset = client.get(f"/api/v1/datasets/{args.dataset}")
    if dataset["archive_error"] or not dataset["archived"]:
        raise ClientError(f"archiving dataset {args.dataset} failed: "
                          f"{dataset['archive_error'] or 'see the server log'}")
    return dataset


def _archive_show(dataset: Any, args: argparse.Namespace) -> None:
    done = dataset["archived"]
    print(f"dataset {dataset['id']} archived: its {done['attempts']:,} attempts and logs left "
          f"the database for {done['path']} ({done['bytes']:,} bytes); floe attempts, logs and "
          "the pages still read them")


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
    "steering": Command("change steering values for a dataset's jobs not yet created, or show "
                        "its config versions", _steering_arguments, _steering_fetch,
                        _steering_show),
    "abort": Command("end a dataset: its unfinished tasks fail, running attempts are stopped, "
                     "jobs not yet created never are", add_dataset, _action("abort"),
                     _changed("aborted")),
    "archive": Command("move an ended dataset's attempts and logs out of the database into a "
                       "compressed archive that floe still reads", add_dataset,
                       _archive_fetch, _archive_show),
    "delete": Command("remove an ended dataset and everything recorded of it (--yes)",
                      _delete_arguments, _delete_fetch, _delete_show),
    "priority": Command("change a dataset's priority", _priority_arguments, _priority_fetch,
                        _priority_show),
})
