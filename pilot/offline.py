"""Run one job of a dataset config here, with no matchmaker: `floe run CONFIG.json --job N`.

For debugging a config or a failed task: the tasks run in the same runner, environment and staging
as on a pilot, in dependency order, each in its own scratch directory under the work directory
(WORKDIR/job<N>/<task>/, emptied first when an earlier `floe run` made it). Outputs are kept
under WORKDIR/outputs/ (file/<path> for a file:// URL, <scheme>/<host>/<path> for others)
instead of being stored at their URLs, so that trying a task out never writes over production's
files, and an input that an earlier task kept there is read from there; `--store-outputs` stores
them where production does. With `--task` only that task runs and its dependencies are assumed
done: their outputs must already be kept there or be wherever its inputs point. The scope is the
production one with attempt 0 and dataset id 0 unless `--dataset` gives the real id, so that
`$choice` picks what production picks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from floe.config.dataset import DatasetConfig, TaskSpec, job_args, load
from floe.config.resources import format_duration, format_size
from floe.config.schema import ConfigError
from floe.pilot.gpus import Gpu, GpuSource, open_gpus
from floe.pilot.runner import Assignment, RunnerSettings, TaskResult, TaskRun
from floe.pilot.scratch import STDOUT_NAME
from floe.pilot.slot import MeasuredSlot, measure
from floe.pilot.staging import kept_path
from floe.pilot.supervisor import Supervisor


class OfflineError(ValueError):
    """A request that cannot be run as given; the message says what to change."""


def add_arguments(parser: argparse.ArgumentParser, *, job_required: bool = True) -> None:
    """The options of an offline run (the config itself is given by the caller's parser)."""
    parser.add_argument("--job", type=int, required=job_required, metavar="N",
                        help="the job index to run, from 0")
    parser.add_argument("--task", metavar="NAME",
                        help="run only this task (its dependencies are not run)")
    parser.add_argument("--dataset", default=0, type=int, metavar="ID",
                        help="the dataset id for $args(dataset) and $choice (default 0); give "
                             "the real id to reproduce production values")
    parser.add_argument("--workdir", default="floe-run", type=Path, metavar="DIR",
                        help="where the tasks' scratch directories go (default ./floe-run)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as one JSON document instead of a summary")
    parser.add_argument("--store-outputs", action="store_true",
                        help="store outputs at their URLs, as production does (default: kept "
                             "under WORKDIR/outputs, where the next tasks' inputs are read "
                             "from, so that production's files are never written over)")
    parser.add_argument("--system", action="append", default=[], metavar="KEY=VALUE",
                        help="a $system(KEY) value, as the site would give it (repeatable)")


def system_values(items: list[str]) -> dict[str, str]:
    """`--system KEY=VALUE` options as the `$system(...)` scope."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OfflineError(f"--system {item!r}: expected KEY=VALUE, as in "
                               "--system gcd_dir=/data/gcd")
        values[key.strip()] = value
    return values


def main(config_path: Path, args: argparse.Namespace) -> int:
    """`floe run` and `pilot.pyz --run`: run the job, print the results; 0 when all succeeded.

    `args` holds the options of `add_arguments`, plus optionally site, lifetime and scratch.
    """
    try:
        config = load(config_path)
        system = system_values(args.system)
        specs = plan(config, args.job, args.task)
    except (ConfigError, OfflineError) as err:
        print(f"floe run: {err}", file=sys.stderr)
        return 2
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"floe run: --workdir {args.workdir}: {err.strerror}", file=sys.stderr)
        return 2
    gpu_source, gpu_note = open_gpus(os.environ)
    slot = measure(site=getattr(args, "site", None), lifetime=getattr(args, "lifetime", None),
                   scratch=args.workdir, gpu_source=gpu_source, gpu_note=gpu_note,
                   unassigned_gpus_are_ours=True)
    say = (lambda text: print(text, file=sys.stderr)) if args.json else print
    try:
        settings = RunnerSettings(
            keep_outputs_in=None if args.store_outputs else kept_outputs(args.workdir))
        results = run_job(config, args.job, slot=slot, workdir=args.workdir, task=args.task,
                          dataset=args.dataset, system=system, gpu_source=gpu_source,
                          settings=settings, say=say)
    except OfflineError as err:
        print(f"floe run: {err}", file=sys.stderr)
        return 2
    if args.json:
        print_json(results)
    ran = {result.task for result in results}
    complete = len(ran) == len(specs) and all(result.ok for result in results)
    return 0 if complete else 1


def kept_outputs(workdir: Path) -> Path:
    """Where `floe run` keeps outputs instead of storing them at their URLs."""
    return workdir.resolve() / "outputs"


def plan(config: DatasetConfig, job: int, task: str | None) -> list[TaskSpec]:
    """The tasks to run, in order; raises OfflineError for a job or task the config lacks."""
    if not 0 <= job < config.jobs:
        raise OfflineError(f"--job {job} is out of range: the dataset has jobs 0 to "
                           f"{config.jobs - 1}")
    if task is None:
        return config.topological_order()
    try:
        return [config.task(task)]
    except KeyError:
        names = ", ".join(spec.name for spec in config.tasks)
        raise OfflineError(f"--task {task}: the dataset has no such task (it has {names})"
                           ) from None


def run_job(
    config: DatasetConfig,
    job: int,
    *,
    slot: MeasuredSlot,
    workdir: Path,
    task: str | None = None,
    dataset: int | str = 0,
    system: Mapping[str, Any] | None = None,
    gpu_source: GpuSource | None = None,
    settings: RunnerSettings | None = None,
    say: Callable[[str], None] = print,
) -> list[TaskResult]:
    """Run the job's tasks (or one of them) and return their results, in the order run.

    A task whose dependency failed is not run. Memory and disk limits are the slot's: a task may
    use more than it requested when this machine has room, as on a pilot running it alone.
    """
    specs = plan(config, job, task)
    if task is not None and specs[0].depends:
        needed = ", ".join(config.tasks[i].name for i in specs[0].depends)
        say(f"running only task {task}; its dependencies ({needed}) are not run: their "
            "outputs must already be where its inputs point"
            + ("" if settings is None or settings.keep_outputs_in is None else
               f", or kept in {settings.keep_outputs_in} by an earlier run"))
    results: list[TaskResult] = []
    failed: set[int] = set()
    for spec in specs:
        blocked = [config.tasks[i].name for i in spec.depends if i in failed]
        if blocked:
            failed.add(spec.index)
            say(f"{spec.name}: not run, because {', '.join(blocked)} failed")
            continue
        scratch = _fresh_scratch(workdir / f"job{job}" / spec.name)
        gpus = _gpus_for(spec, slot, say)
        assignment = Assignment(
            task=spec.raw, steering=config.steering, system=dict(system or {}),
            args=job_args(job, dataset, config.jobs, spec.name))
        supervisor = Supervisor(memory=max(slot.memory, spec.requirements.memory),
                                disk=max(slot.disk, spec.requirements.disk))
        result = TaskRun(assignment, scratch, gpus=gpus, gpu_source=gpu_source,
                         settings=settings, supervisor=supervisor).run()
        if settings is None or settings.keep_outputs_in is None:
            for output in result.outputs:  # stored where production's are: a copy that an
                with contextlib.suppress(OSError):  # earlier run kept would now be stale
                    kept_path(kept_outputs(workdir), output["url"]).unlink()
        results.append(result)
        if not result.ok:
            failed.add(spec.index)
        say(summary(result))
    return results


def _gpus_for(spec: TaskSpec, slot: MeasuredSlot, say: Callable[[str], None]) -> list[Gpu]:
    wanted = spec.requirements.gpus
    if wanted > len(slot.gpus):
        say(f"{spec.name}: requests {wanted} GPUs, this machine offers {len(slot.gpus)} "
            f"({slot.sources.get('gpus', '')}); running it with those")
    return list(slot.gpus[:wanted])


def _fresh_scratch(directory: Path) -> Path:
    """An empty scratch directory; refuses to empty one that an earlier run did not make."""
    if directory.exists():
        if any(directory.iterdir()) and not (directory / STDOUT_NAME).exists():
            raise OfflineError(f"{directory} exists and was not made by floe run; give another "
                               "--workdir or remove it")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return directory


def summary(result: TaskResult) -> str:
    """A few lines saying how a task went, for a terminal."""
    usage = result.usage
    if result.ok:
        head = f"{result.task}: ok (exit 0)"
    else:
        code = "" if result.exit_code is None else f" (exit {result.exit_code})"
        head = (f"{result.task}: FAILED, {result.error_class.value}{code}: "
                f"{result.error_message}")
    lines = [
        head,
        f"  usage: wall {_seconds(usage.wall_time)}, cpu {_seconds(usage.cpu_time)}, "
        f"peak memory {format_size(usage.peak_memory)}, peak disk {format_size(usage.peak_disk)}"
        + (f", peak GPU memory {format_size(usage.peak_gpu_memory)}"
           if usage.peak_gpu_memory else ""),
    ]
    if result.statistics:
        lines.append(f"  statistics: {json.dumps(result.statistics)}")
    lines.extend(f"  warning: {warning}" for warning in result.warnings)
    for output in result.outputs:
        where = (f"kept in {output['kept']} (production stores it at {output['url']}; "
                 "--store-outputs does too)") if "kept" in output else f"-> {output['url']}"
        lines.append(f"  output {output['local']} {where} "
                     f"({format_size(output['size'])}, sha256 {output['sha256'][:16]}...)")
    lines.append(f"  logs: {result.stdout_path} {result.stderr_path}")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:.2f}s" if value < 60 else format_duration(value)


def print_json(results: list[TaskResult]) -> None:
    json.dump([result.to_dict() for result in results], sys.stdout, indent=2)
    sys.stdout.write("\n")
