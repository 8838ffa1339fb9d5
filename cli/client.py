"""`floe submit`, `floe status` and `floe wait`: the commands production managers and analysts
start with. `floe submit` reads the dataset config from a file or, given `-`, from stdin, and
with `--dry-run` shows what the matchmaker would create (its own checks and limits, as for a
submit) without creating anything."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any

from floe.config.resources import format_duration, format_size
from floe.config.schema import ConfigError, counted

from .command import add_dataset, add_json, fail, period, print_json, seconds
from .http import Client, ClientError

if TYPE_CHECKING:
    from floe.config.dataset import DatasetConfig

STATES = ("waiting", "ready", "processing", "complete", "failed", "suspended")
ENDED = ("complete", "failed")


def progress_bar(counts: dict[str, int], width: int = 30) -> str:
    """A one-line bar: '#' complete, 'x' failed, '>' processing, '.' the rest."""
    total = sum(counts.values()) or 1
    done = round(width * counts.get("complete", 0) / total)
    failed = round(width * counts.get("failed", 0) / total)
    running = round(width * counts.get("processing", 0) / total)
    bar = "#" * done + "x" * failed + ">" * running
    return "[" + bar[:width].ljust(width, ".") + "]"


def percent_ended(counts: dict[str, int], decimals: int = 1) -> str:
    """The percentage of tasks ended (complete or failed) of all the tasks in `counts`, with
    `decimals` decimals, or as many more as it takes for a dataset with some tasks ended not
    to read 0 and one with some still to run not to read 100 (a few tasks of a large dataset
    are a few thousandths of a percent)."""
    total = sum(counts.values())
    ended = counts.get("complete", 0) + counts.get("failed", 0)
    percent = 100.0 * ended / (total or 1)
    text = f"{percent:.{decimals}f}"
    while 0 < ended < total and float(text) in (0.0, 100.0):
        decimals += 1
        text = f"{percent:.{decimals}f}"
    return text


def _configure_submit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="dataset config (JSON; see docs/config.md), or - to "
                                       "read it from stdin")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config on the matchmaker, as a submit, and show what "
                             "it would create (jobs, tasks, job 0's commands), creating nothing")
    add_json(parser)


def _read_stdin() -> DatasetConfig:
    """The dataset config piped in on stdin; ConfigError saying what is wrong when there is
    none, or when it is no JSON document."""
    from floe.config.dataset import validate
    from floe.config.schema import parse_json

    if sys.stdin.isatty():
        print("floe submit: reading the dataset config from stdin (end it with Ctrl-D)",
              file=sys.stderr)
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([f"stdin: not UTF-8 text (byte {err.start}); send the dataset "
                           "config as UTF-8"]) from None
    if not text.strip():
        raise ConfigError(["stdin is empty: pipe the dataset config in (`floe submit - < "
                           "dataset.json`), or give its file name instead of -"])
    try:
        document = parse_json(text, "stdin")
    except ConfigError as exc:
        raise ConfigError([f"{exc} (stdin is not one JSON document; send the dataset config "
                           "as JSON, see docs/config.md)"]) from None
    return validate(document)


def _run_submit(args: argparse.Namespace) -> int:
    from floe.config.dataset import load

    source = "stdin" if args.config == "-" else args.config
    try:
        # The same checks as the server's, with positions in the file.
        config = _read_stdin() if args.config == "-" else load(args.config)
        client = Client.from_args(args)
        if args.dry_run:
            preview = client.post("/api/v1/datasets", config.raw, dry_run="true")
        else:
            dataset = client.post("/api/v1/datasets", config.raw)
    except ConfigError as exc:
        return fail(args, f"{source} is not a valid dataset config:\n{exc}")
    except (ClientError, OSError) as exc:
        return fail(args, exc)
    if args.dry_run:
        if args.json:
            print_json(preview)
        else:
            _print_preview(preview, client.url)
    elif args.json:
        print_json(dataset)
    else:
        names = ", ".join(dataset["task_names"])
        jobs, tasks = dataset["jobs"], dataset["tasks_per_job"]
        print(f"dataset {dataset['id']} submitted: {counted(jobs, 'job')} of "
              f"{counted(tasks, 'task')} ({names}); follow it with "
              f"`floe status {dataset['id']}`")
    return 0


def _requirements(needs: dict[str, Any]) -> str:
    """A task's requirements in a few words: "2 CPUs, 4 GiB memory, 1 GiB disk, 1h"."""
    words = [counted(needs["cpus"], "CPU"), f"{format_size(needs['memory'])} memory",
             f"{format_size(needs['disk'])} disk"]
    if needs["gpus"]:
        words.append(counted(needs["gpus"], "GPU"))
    words.append(format_duration(needs["walltime"]))
    for key in ("os", "arch", "sites", "exclude_sites"):
        if needs[key]:
            words.append(f"{key.replace('_', ' ')} {', '.join(needs[key])}")
    for key in ("gpu_model", "compute_capability"):
        if needs.get(key):
            words.append(f"{key.replace('_', ' ')} {needs[key]}")
    if needs.get("gpu_memory"):
        words.append(f"{format_size(needs['gpu_memory'])} per GPU")
    return ", ".join(words)


def _shown(value: Any) -> str:
    """A value of a task as a command line shows it: strings as they are, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _print_preview(preview: dict[str, Any], url: str) -> None:
    """What a dry run of a submit says the matchmaker would create."""
    jobs, per_job = preview["jobs"], preview["tasks_per_job"]
    print(f"dry run: the matchmaker at {url} takes this dataset of {preview['owner']}; nothing "
          "was submitted")
    if preview["description"]:
        print(f"  {preview['description']}")
    print(f"  {counted(jobs, 'job')} of {counted(per_job, 'task')} "
          f"({', '.join(preview['task_names'])}): {counted(preview['total_tasks'], 'task')} in "
          f"all; priority {preview['priority']:g}, max_retries {preview['max_retries']}"
          f"{', debug' if preview['debug'] else ''}")
    print("job 0 (expressions that need the site, the dataset's id or the attempt stay as "
          "written):")
    for task in preview["first_job"]:
        after = f" (after {', '.join(task['depends'])})" if task["depends"] else ""
        print(f"  {task['task']}{after}: {_requirements(task['requirements'])}")
        for name, value in task["env"].items():
            print(f"    env {name}={_shown(value)}")
        for entry in task["inputs"]:
            print(f"    input  {entry['url']} -> {entry['local']}")
        for module in task["modules"]:
            command = module["command"]
            line = _shown(command) if isinstance(command, str) else \
                shlex.join(_shown(word) for word in command)
            print(f"    {module['name']}: {line}")
            for name, value in module["env"].items():
                print(f"      env {name}={_shown(value)}")
        for entry in task["outputs"]:
            print(f"    output {entry['local']} -> {entry['url']}")


LATEST_ENDED = 10
"""Datasets that have ended that `floe status` lists, the latest, beside every open one."""


def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", nargs="?", type=int, help="one dataset in detail")
    parser.add_argument("--all", action="store_true",
                        help="every dataset, however many have ended")
    add_json(parser)


def _overview(client: Client, everything: bool) -> tuple[list[dict[str, Any]], int]:
    """The datasets `floe status` lists, and how many older ones ended that it leaves out.
    The open ones are asked for first: one that ends between the two requests is in both
    answers, not in neither."""
    if everything:
        return client.get("/api/v1/datasets")["datasets"], 0
    listed = {d["id"]: d for d in client.get("/api/v1/datasets", status="open")["datasets"]}
    ended = client.get("/api/v1/datasets", status="ended", limit=LATEST_ENDED)
    listed.update((d["id"], d) for d in ended["datasets"])
    return sorted(listed.values(), key=lambda d: d["id"]), ended["more"]


def _print_overview(datasets: list[dict[str, Any]], older: int) -> None:
    if not datasets:
        print("no datasets yet; submit one with `floe submit CONFIG.json`")
        return
    print(f"{'ID':>4}  {'OWNER':<12} {'STATUS':<11} {'JOBS':>8}  {'PROGRESS':<32} "
          f"{'DONE':>6}  {'RUN':>5} {'FAIL':>5}  DESCRIPTION")
    for d in datasets:
        counts = d["tasks"]
        print(f"{d['id']:>4}  {(d['owner'] or '-')[:12]:<12} {d['status']:<11} {d['jobs']:>8}  "
              f"{progress_bar(counts):<32} {percent_ended(counts):>5}%  "
              f"{counts['processing']:>5} {counts['failed']:>5}  {d['description'][:40]}")
    if older:
        print(f"({counted(older, 'older dataset')} ended: `floe status --all`, or `floe "
              "datasets --status ended --limit N` for the latest N, lists them)")


def _print_dataset(d: dict[str, Any], statistics: list[dict[str, Any]]) -> None:
    counts = d["tasks"]
    print(f"dataset {d['id']} of {d['owner']}: {d['status']}, priority {d['priority']}, "
          f"max_retries {d['max_retries']}{', debug' if d['debug'] else ''}")
    if d["description"]:
        print(f"  {d['description']}")
    print(f"  jobs: {d['jobs']} ({d['jobs_created']} created), "
          f"{counted(d['tasks_per_job'], 'task')} each: {', '.join(d['task_names'])}")
    print(f"  {progress_bar(counts, 40)} {percent_ended(counts)}% done")
    print("  tasks: " + ", ".join(f"{s} {counts[s]}" for s in STATES))
    archived = d.get("archived")
    if archived:
        print(f"  archived: {archived['attempts']:,} attempts in {archived['path']} "
              f"({archived['bytes']:,} bytes); it cannot be reset, grown or steered")
    elif d.get("archiving"):
        print("  being archived")
    elif d.get("archive_error"):
        print(f"  its archive failed: {d['archive_error']}")
    if len(d.get("config_versions") or ()) > 1:
        print(f"  config version {d['config_versions'][-1]['version']} for new jobs "
              f"(floe steering {d['id']} lists them)")
    for kind in d.get("waiting") or []:
        print(f"  {counted(kind['tasks'], kind['task'] + ' task')} ready: {kind['why']}")
    overall = [s for s in statistics if s["task"] is None]
    if overall:
        print("  statistics (all tasks):")
        for s in overall:
            print(f"    {s['kind']:<8} {s['name']:<20} n={s['count']:<8} sum={s['sum']:<14.6g} "
                  f"mean={s['mean']:<12.6g} sd={s['stddev']:.6g}")
    events = d.get("events") or []
    if events:
        print("  recent events:")
        for e in events[:5]:
            print(f"    {e['action']:<12} by {e['user'] or '-'}: {e['detail']}")


def _run_status(args: argparse.Namespace) -> int:
    try:
        client = Client.from_args(args)
        if args.dataset is None:
            datasets, older = _overview(client, args.all)
            if args.json:
                print_json(datasets)
            else:
                _print_overview(datasets, older)
            return 0
        dataset = client.get(f"/api/v1/datasets/{args.dataset}")
        statistics = client.get(f"/api/v1/datasets/{args.dataset}/statistics")["statistics"]
    except ClientError as exc:
        return fail(args, exc)
    if args.json:
        dataset["statistics"] = statistics
        print_json(dataset)
    else:
        _print_dataset(dataset, statistics)
    return 0


def _configure_wait(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--interval", type=period, metavar="SECONDS",
                        help="how often to show the progress (default: every second on a "
                             "terminal, a bar redrawn in place; else a line for each change, "
                             "at most one every 5 seconds); the end is shown the moment it "
                             "comes, whatever this is")
    parser.add_argument("--timeout", type=seconds, metavar="SECONDS",
                        help="give up after this long, with exit status 1")
    add_json(parser)


def _progress_line(dataset: dict[str, Any], bar: bool) -> str:
    """The dataset's progress in one line, with a bar for a terminal (a log gets the numbers)."""
    counts = dataset["tasks"]
    tally = ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s])
    shown = f"{progress_bar(counts)} {percent_ended(counts):>5}" if bar else percent_ended(counts)
    return f"dataset {dataset['id']} {dataset['status']}: {shown}% done ({tally})"


MAX_WAIT = 20
"""The most seconds one request waits for the dataset to end or change (under the client's
timeout)."""


def _run_wait(args: argparse.Namespace) -> int:
    """Exit status 0 once every task is complete, 1 if the dataset ended with failed tasks (or
    on a timeout or an error). Each request waits on the matchmaker for the dataset to end, up
    to the interval, so the end is seen at once without asking again and again. Not on a
    terminal, once the interval has passed since the last line, the next request waits for the
    next change instead: a line for each change, none repeated, and no more than one an
    interval."""
    terminal = sys.stdout.isatty() and not args.json
    interval = args.interval or (1.0 if terminal else 5.0)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    path = f"/api/v1/datasets/{args.dataset}"
    shown, version, printed = None, None, 0.0
    try:
        client = Client.from_args(args)
        while True:
            since = time.monotonic() - printed
            if version is None:  # the progress as it is now, at once
                query = {"until": "end", "wait": 0.0}
            elif terminal or since < interval:
                query = {"until": "end", "wait": interval - (0 if terminal else since)}
            else:
                query = {"until": "change", "since": version, "wait": MAX_WAIT}
            if deadline is not None:
                query["wait"] = min(query["wait"], deadline - time.monotonic())
            query["wait"] = f"{max(0.0, min(MAX_WAIT, query['wait'])):.3f}"
            dataset = client.get(f"{path}/progress", **query)
            version = dataset["version"]
            line = _progress_line(dataset, terminal)
            if not args.json and (terminal or line != shown):
                print(f"\r{line}\x1b[K" if terminal else line, end="" if terminal else "\n",
                      flush=True)
                shown, printed = line, time.monotonic()
            if dataset["status"] in ENDED:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise ClientError(f"dataset {args.dataset} is still {dataset['status']} after "
                                  f"{args.timeout:g} s; gave up waiting (--timeout)")
        if args.json:
            dataset = client.get(path)
    except ClientError as exc:
        if terminal:
            print()
        return fail(args, exc)
    if terminal:
        print()
    if args.json:
        print_json(dataset)
    if dataset["status"] == "failed":
        return fail(args, f"dataset {args.dataset} ended with "
                          f"{counted(dataset['tasks']['failed'], 'failed task')}; see "
                          f"`floe tasks {args.dataset} --state failed`")
    return 0


SUBCOMMANDS = {
    "submit": ("submit a dataset config to the matchmaker", _configure_submit, _run_submit),
    "status": ("show the datasets that have not ended and the latest 10 that have, with their "
               "progress, or one dataset in detail", _configure_status, _run_status),
    "wait": ("show a dataset's progress until it ends (exit status 0 if every task is "
             "complete)", _configure_wait, _run_wait),
}
