"""Dispatch `floe SUBCOMMAND ...` to the module that implements it.

Each module listed in COMMANDS provides `configure(parser)` to declare its options and
`run(args) -> int` to do the work; a module may declare several subcommands through
`SUBCOMMANDS`, a mapping of name to (help, configure, run).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import floe

# Modules in the order their subcommands appear in `floe --help`.
MODULES = ("floe.cli.server", "floe.cli.database", "floe.cli.client", "floe.cli.datasets",
           "floe.cli.steer", "floe.cli.pool", "floe.cli.pilot", "floe.cli.factory",
           "floe.cli.demo", "floe.cli.docs", "floe.cli.completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floe",
        description="floe: a pull-based pilot factory (matchmaker, pilots, site factories).",
    )
    parser.add_argument("--version", action="version", version=f"floe {floe.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, (help_text, configure, run) in module.SUBCOMMANDS.items():
            command = sub.add_parser(name, help=help_text, description=help_text)
            configure(command)
            command.set_defaults(_run=run, _options=_options(command))
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's destination and the option as a user types it (`limit` -> `--limit`), for
    messages that name the field an option gave (cli.command.fail)."""
    return {action.dest: max(action.option_strings, key=len)
            for action in parser._actions if action.option_strings}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
