"""What the `floe` commands that talk to a matchmaker share: their common arguments, aligned
tables for people, the API's own answer with `--json`, and any failure as one sentence on
stderr with exit status 1.

Most commands are a request and a picture of its answer: a `Command` holds the two (`fetch`
asks the matchmaker and returns plain data, `show` prints it for people), and `--json` prints
what `fetch` returned.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from floe.config.resources import format_duration

from .http import Client, ClientError, add_options


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def fail(args: argparse.Namespace, message: object) -> int:
    """Print `floe COMMAND: message` on stderr; returns the exit status of a failure.

    The matchmaker starts a refusal of a request's field with the field's name ("priority: must
    be greater than 0"): said here with the user's words for it, an option as it is typed
    (`--limit`), and a field named as the command is once, not twice."""
    text = str(message)
    field, colon, rest = text.partition(": ")
    options = getattr(args, "_options", {})
    if colon and field == args.command:
        text = rest
    elif colon and field in options:
        text = f"{options[field]}: {rest}"
    print(f"floe {args.command}: {text}", file=sys.stderr)
    return 1


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell: numbers right-aligned, None shown as '-'."""
    cells = [["-" if value is None else str(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells])
              for i, header in enumerate(headers)]
    right = [bool(rows) and all(value is None or (isinstance(value, (int, float))
                                                  and not isinstance(value, bool))
                                for value in (row[i] for row in rows))
             for i in range(len(headers))]
    lines = []
    for row in [list(headers), *cells]:
        lines.append("  ".join(text.rjust(width) if align else text.ljust(width)
                               for text, width, align in zip(row, widths, right, strict=True))
                     .rstrip())
    return "\n".join(lines)


def moment(timestamp: float | None) -> str | None:
    """A server time as local date and time to the second."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def age(timestamp: float | None) -> str | None:
    """How long ago a server time was, like '3h20m'."""
    if timestamp is None:
        return None
    return format_duration(max(0.0, time.time() - timestamp))


def number(text: str) -> float:
    """An argument that must be a finite number (argparse's `float` takes nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number: give one like 2.5")
    return value


def seconds(text: str) -> float:
    """An argument that is a number of seconds, 0 or more (leaving the option out is how to say
    "no limit")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value == math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: leave the option out to have no limit")
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


SHORTEST_PERIOD = 0.1
"""Seconds: a shorter interval would ask the matchmaker again and again for nothing new."""


def period(text: str) -> float:
    """An argument that is how often to do something, in seconds: `SHORTEST_PERIOD` or more."""
    value = seconds(text)
    if value < SHORTEST_PERIOD:
        raise argparse.ArgumentTypeError(f"{text!r}: an interval must be at least "
                                         f"{SHORTEST_PERIOD} seconds")
    return value


def add_json(parser: argparse.ArgumentParser) -> None:
    """`--json` and the server options, which every command that asks a matchmaker takes."""
    parser.add_argument("--json", action="store_true",
                        help="print the matchmaker's answer as JSON instead of a table")
    add_options(parser)


def add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=int, help="the dataset's id (see `floe datasets`)")


def add_paging(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--limit", type=int, default=100, metavar="N",
                        help=f"show at most N {what} (the API's page size; at most 1000)")
    parser.add_argument("--after", type=int, metavar="ID",
                        help=f"start after this {what[:-1]} (the last one of the previous page)")


def next_page(args: argparse.Namespace, after: int | None) -> None:
    """Tell how to see the next page, when the API says there is one."""
    if after is not None:
        print(f"(more: add --after {after} to see the next {args.limit})")


Fetch = Callable[[Client, argparse.Namespace], Any]
Show = Callable[[Any, argparse.Namespace], None]


@dataclass(frozen=True)
class Command:
    """One subcommand of `floe` that asks the matchmaker and shows the answer."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    fetch: Fetch
    show: Show

    def configure(self, parser: argparse.ArgumentParser) -> None:
        self.arguments(parser)
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        try:
            data = self.fetch(Client.from_args(args), args)
        except ClientError as exc:
            return fail(args, exc)
        if args.json:
            print_json(data)
        else:
            self.show(data, args)
        return 0


def subcommands(commands: dict[str, Command]) -> dict[str, tuple[str, Any, Any]]:
    """main.py's SUBCOMMANDS mapping (name -> help, configure, run) for a module's commands."""
    return {name: (c.help, c.configure, c.run) for name, c in commands.items()}
