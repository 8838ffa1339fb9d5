"""`floe pilot`, `floe pilot-bundle`, `floe run`: the pilot from the command line.

`floe pilot ...` takes exactly the options of `python3 pilot.pyz ...` (both are
`pilot.main`); `floe pilot-bundle` writes pilot.pyz; `floe run` runs one job of a dataset config
here, in the pilot's runner, for debugging.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _configure_pilot(parser: argparse.ArgumentParser) -> None:
    from floe.pilot.main import add_arguments

    add_arguments(parser)


def _run_pilot(args: argparse.Namespace) -> int:
    from floe.pilot.main import run

    return run(args)


def _configure_bundle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("pilot.pyz"), metavar="FILE",
                        help="where to write the bundle (default ./pilot.pyz)")


def _run_bundle(args: argparse.Namespace) -> int:
    from floe.pilot.bundle import build, pynvml_file

    path = build(args.output)
    if pynvml_file() is None:
        print("note: nvidia-ml-py is not installed here, so the bundle carries no pynvml; "
              "nodes without pynvml will report no GPUs", file=sys.stderr)
    print(path)
    return 0


def _configure_run(parser: argparse.ArgumentParser) -> None:
    from floe.pilot.offline import add_arguments

    parser.add_argument("config", type=Path, metavar="CONFIG.json", help="the dataset config")
    add_arguments(parser)


def _run_run(args: argparse.Namespace) -> int:
    from floe.pilot.offline import main

    return main(args.config, args)


SUBCOMMANDS = {
    "pilot": ("run the pilot here (--probe shows what it measures)", _configure_pilot,
              _run_pilot),
    "pilot-bundle": ("write pilot.pyz, the pilot as one file for worker nodes",
                     _configure_bundle, _run_bundle),
    "run": ("run one job of a dataset config here, without a matchmaker", _configure_run,
            _run_run),
}
