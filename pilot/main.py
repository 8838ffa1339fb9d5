"""The pilot's command line, shared by `floe pilot ...` and `python3 pilot.pyz ...`.

Modes: `--matchmaker URL` pulls tasks from a matchmaker and runs them (what batch jobs start);
`--probe` prints what the pilot measures of its slot as JSON (for site admins checking what a
node offers and why); `--run CONFIG.json --job N` runs a job here with no matchmaker, as
`floe run` does. The options that describe the slot (`--site`, `--lifetime`, `--scratch`) are
common to every mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from floe.pilot import offline, online
from floe.pilot.slot import SlotError, measure


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the pilot's options on `parser` (its own, or `floe pilot`'s)."""
    slot = parser.add_argument_group("the slot")
    slot.add_argument("--site", help="the site's name (default: $FLOE_SITE)")
    slot.add_argument("--lifetime", type=online.duration_argument, metavar="DURATION",
                      help='how long the pilot may run, like "2h" (wins over the batch '
                           "system's walltime)")
    slot.add_argument("--scratch", type=Path, metavar="DIR",
                      help="where tasks run (default: the batch system's scratch directory, "
                           "else the current directory)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--matchmaker", metavar="URL",
                      help="pull tasks from the matchmaker at URL and run them here")
    mode.add_argument("--probe", action="store_true",
                      help="print what the pilot measures of its slot as JSON and exit")
    mode.add_argument("--run", type=Path, metavar="CONFIG.json",
                      help="run one job of this dataset config here, with no matchmaker")
    online.add_arguments(parser.add_argument_group("with --matchmaker"))
    offline_options = parser.add_argument_group("with --run (--system also with --matchmaker)")
    offline.add_arguments(offline_options, job_required=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilot.pyz",
        description="The floe pilot: measures its slot and runs tasks in it.")
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Do what the parsed options ask."""
    if args.matchmaker is not None:
        return online.main(args)
    if args.probe:
        try:
            slot = measure(site=args.site, lifetime=args.lifetime, scratch=args.scratch)
        except SlotError as err:
            print(f"pilot: {err}", file=sys.stderr)
            return 2
        json.dump(slot.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.run is not None:
        if args.job is None:
            print("pilot: --run needs --job N, the index of the job to run", file=sys.stderr)
            return 2
        return offline.main(args.run, args)
    print("pilot: say what to do: --matchmaker URL, --probe, or --run CONFIG.json --job N",
          file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
