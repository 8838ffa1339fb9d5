"""`floe suspend`, `resume`, `reset` and `priority`: the actions a dataset's owner (or an admin)
takes on it. Anyone else is refused by the matchmaker, and gets its sentence."""

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
    return client.post(f"/api/v1/datasets/{args.dataset}/reset",
                       {"scope": "all" if args.all else "failed"})


def _priority_fetch(client: Client, args: argparse.Namespace) -> Any:
    return client.put(f"/api/v1/datasets/{args.dataset}/priority", {"priority": args.priority})


def _changed(done: str) -> Show:
    def show(answer: Any, args: argparse.Namespace) -> None:
        dataset, changed = answer["dataset"], answer["changed"]
        print(f"dataset {dataset['id']} {done}: {changed} task{'' if changed == 1 else 's'} "
              f"changed; it is now {dataset['status']}")
    return show


def _priority_show(dataset: Any, args: argparse.Namespace) -> None:
    print(f"dataset {dataset['id']} now has priority {dataset['priority']:g}")


SUBCOMMANDS = subcommands({
    "suspend": Command("hold a dataset's unfinished tasks (voids running attempts)",
                       add_dataset, _action("suspend"), _changed("suspended")),
    "resume": Command("release a suspended dataset", add_dataset, _action("resume"),
                      _changed("resumed")),
    "reset": Command("start a dataset's failed tasks (or --all) over", _reset_arguments,
                     _reset_fetch, _changed("reset")),
    "priority": Command("change a dataset's priority", _priority_arguments, _priority_fetch,
                        _priority_show),
})
