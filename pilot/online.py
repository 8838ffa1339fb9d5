"""`floe pilot --matchmaker URL`: the pilot as a batch job starts it, pulling work from a
matchmaker until it runs out of work, of time, or of reasons to trust its node.

This module turns the command line into a `Pilot` (see `pilot.loop`): it reads the pilot token
from `--token-file` and deletes the file, makes the pilot's memory unreadable to its tasks,
measures the slot, opens the work area on the scratch directory and runs the loop.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from floe.config.protocol import TOKEN_PREFIXES, token_kind
from floe.config.resources import ResourceError, parse_duration
from floe.pilot.client import Matchmaker
from floe.pilot.gpus import open_gpus
from floe.pilot.launchdir import LaunchDir
from floe.pilot.loop import Pilot
from floe.pilot.offline import OfflineError, system_values
from floe.pilot.runner import RunnerSettings
from floe.pilot.settings import EXIT_ERROR, PilotSettings
from floe.pilot.slot import SlotError, measure
from floe.pilot.supervisor import WALLTIME_GRACE
from floe.pilot.workarea import WorkArea, WorkAreaError

TOKEN_VARIABLE = "FLOE_PILOT_TOKEN"
EXIT_USAGE = 2


def duration_argument(text: str) -> int:
    """An argparse type: a duration like "5m" or "1-12:00:00", in seconds."""
    try:
        return parse_duration(text)
    except ResourceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def seconds_argument(text: str) -> float:
    """An argparse type: seconds, 0 or more, as a number ("0.5", "0.5s") or a duration ("2s",
    "1m")."""
    number = text[:-1] if text.endswith("s") else text
    try:
        seconds = float(number)
    except ValueError:
        try:
            seconds = float(parse_duration(text))
        except ResourceError:
            seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more) "
                                         "nor a duration like 2s or 1m")
    return seconds


def add_arguments(group: argparse._ActionsContainer) -> None:
    """The options of the online pilot (`--matchmaker` itself is in the mode group)."""
    group.add_argument("--token-file", type=Path, metavar="FILE",
                       help="file holding the pilot token; deleted once read (each token "
                            "registers one pilot)")
    group.add_argument("--launch-dir", type=Path, metavar="DIR",
                       help="the directory the job script made for this pilot (the launcher "
                            "gives it): the pilot holds a lock in it while it lives, and removes "
                            "the ones beside it that killed pilots left")
    group.add_argument("--cacert", metavar="FILE", default=os.environ.get("FLOE_CACERT"),
                       help="CA certificate(s) to trust for an https matchmaker (PEM; default "
                            "$FLOE_CACERT, else the system's)")
    group.add_argument("--idle-timeout", type=duration_argument, default=300, metavar="DURATION",
                       help="leave after this long with no work (default 5m)")
    group.add_argument("--max-failures", type=int, default=5, metavar="N",
                       help="after N different tasks fail in a row, stop taking work and "
                            "report the node as suspect (default 5; 0: never)")
    group.add_argument("--walltime-grace", type=duration_argument, default=int(WALLTIME_GRACE),
                       metavar="DURATION",
                       help="how long a task may run past its walltime before it is killed "
                            "(default 1m)")
    group.add_argument("--prefetch-horizon", type=seconds_argument, default=1.0,
                       metavar="SECONDS",
                       help="while its tasks are short, queue about this many seconds of them "
                            "to run one after another; once the tasks running have all run 5 "
                            "times longer and leave no room beside them, give what is queued "
                            "back unstarted (not_run: requeued at once, for another pilot) "
                            "(seconds, or a duration like 2s; default 1; 0: never queue)")
    group.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                       help="how much the pilot logs on stderr (default info)")


def read_token(token_file: Path | None) -> str:
    """The pilot token, read from `token_file`, which is then deleted: a pilot token registers
    one pilot, and no task of this pilot finds it. Raises ValueError with the fix when there is
    none, or when it sits in the environment (where every task of the pilot could read it)."""
    if os.environ.get(TOKEN_VARIABLE):
        raise ValueError(f"{TOKEN_VARIABLE} is set: a token in the environment can be read by "
                         "every task the pilot runs; write it into a file and give "
                         "--token-file FILE (the pilot deletes the file once it has read it)")
    if token_file is None:
        raise ValueError("no pilot token: give --token-file FILE (`floe site pilot-token` "
                         "makes one; each registers one pilot)")
    try:
        token = token_file.read_text().strip()
    except OSError as err:
        raise ValueError(f"--token-file {token_file}: {err.strerror or err}") from None
    if not token:
        raise ValueError(f"--token-file {token_file} is empty; write the pilot token into it")
    kind = token_kind(token)
    if kind != "pilot" or any(c.isspace() for c in token):
        # Left where it is: it is not one this pilot could use up.
        what = "more than the token (the file must hold the token alone)" \
            if kind == "pilot" or any(c.isspace() for c in token) else \
            f"a {kind} token, not a pilot token" if kind else "no floe token"
        raise ValueError(f"--token-file {token_file} holds {what}; write a pilot token "
                         f"({TOKEN_PREFIXES['pilot']}...) into it: `floe site pilot-token "
                         "SITE > FILE` prints one on the matchmaker's host")
    try:
        token_file.unlink()
    except OSError as err:
        raise ValueError(f"--token-file {token_file} cannot be deleted ({err.strerror or err}); "
                         "the pilot will not leave its token where its tasks can read it") \
            from None
    return token


def keep_memory_private() -> None:
    """Make this process unreadable to other processes of the same user (Linux: not dumpable):
    its tasks run as the same user, and must not read the pilot's key or passkeys from its
    memory or /proc/<pid>/environ. Tasks are started by exec, which makes them dumpable again."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError) as err:
        logging.getLogger("floe.pilot").warning(
            "cannot make the pilot's memory private from its tasks: %s", err)


def version() -> str:
    try:
        return metadata.version("floe")
    except metadata.PackageNotFoundError:
        return "pilot.pyz"


def main(args: argparse.Namespace) -> int:
    """Run the pilot against `args.matchmaker`; returns its exit status."""
    try:
        token = read_token(args.token_file)
        system = system_values(args.system)
        client = Matchmaker(args.matchmaker, token, cacert=args.cacert)
        if args.max_failures < 0:
            raise ValueError(f"--max-failures {args.max_failures}: give 0 (never) or more")
    except (ValueError, OfflineError, OSError) as err:
        print(f"pilot: {err}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s floe pilot: %(message)s")
    if client.proxy is not None:
        logging.getLogger("floe.pilot").info("reaching the matchmaker through the proxy %s",
                                             client.proxy.name)
    keep_memory_private()
    launch = held_launch_dir(args.launch_dir)
    try:
        return _run(args, client, system)
    finally:
        if launch is not None:
            launch.close()


def held_launch_dir(path: Path | None) -> LaunchDir | None:
    """The launcher's directory at `path`, held, with what killed pilots left beside it
    removed (both said in the log); None without one, or when it cannot be held."""
    if path is None:
        return None
    log = logging.getLogger("floe.pilot")
    launch = LaunchDir(path)
    try:
        launch.hold()
    except OSError as err:
        log.warning("cannot hold its launcher's directory (%s): should this pilot be killed, "
                    "the directory stays behind", err.strerror or err)
        return None
    removed, failed = launch.sweep()
    if removed:
        log.info("removed %s left by killed pilots' launchers: %s",
                 "1 directory" if len(removed) == 1 else f"{len(removed)} directories",
                 ", ".join(removed))
    for problem in failed:
        log.warning("cannot remove a directory left by a killed pilot's launcher, %s", problem)
    return launch


def _run(args: argparse.Namespace, client: Matchmaker, system: dict[str, str]) -> int:
    """The pilot from its node's measure to its end: its exit status."""
    # Tasks inherit the pilot's environment: no site's or user's token that a careless batch
    # system passed on from the factory may go with it.
    for name in ("FLOE_SITE_TOKEN", "FLOE_TOKEN"):
        os.environ.pop(name, None)
    if args.scratch is not None:
        try:
            args.scratch.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"pilot: --scratch {args.scratch}: {err.strerror or err}", file=sys.stderr)
            return EXIT_USAGE
    gpu_source, gpu_note = open_gpus(os.environ)
    try:
        slot = measure(site=args.site, lifetime=args.lifetime, scratch=args.scratch,
                       gpu_source=gpu_source, gpu_note=gpu_note)
    except SlotError as err:
        print(f"pilot: {err}", file=sys.stderr)
        return EXIT_USAGE
    work = WorkArea(slot.scratch)
    try:
        work.open()
    except WorkAreaError as err:
        print(f"pilot: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # the message names the directory or file it could not use
        print(f"pilot: cannot use its work area {work.root}: {err}", file=sys.stderr)
        return EXIT_ERROR
    settings = PilotSettings(
        idle_timeout=args.idle_timeout, max_failures=args.max_failures,
        walltime_grace=args.walltime_grace, prefetch_horizon=args.prefetch_horizon,
        system=system, version=version(),
        runner=RunnerSettings(kill_grace=3.0))
    try:
        return Pilot(client, slot, work, settings, gpu_source=gpu_source).run()
    finally:
        work.close()
