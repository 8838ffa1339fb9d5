"""The benchmark summary in README.md, made from the benchmarks' own JSON output.

`make bench` saves what each benchmark prints under docs/bench/ (matchmaker.json,
large_dataset.json, pilot.json, factory.json, submission.json, hostile.json, defaults.json,
record.json;
`make bench-scale`, scale.json) and then runs this script, which writes the summary table
between the `benchmarks:begin` and `benchmarks:end` markers of README.md: each figure read
from those files, each target from the issue that set it, and met or missed decided from the
two. No figure is typed by hand, so the
table cannot drift from the runs it reports; a test holds README.md to the committed files.
`--check` exits 1 if README.md is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench"
README = ROOT / "README.md"
BEGIN = "<!-- benchmarks:begin (made by benchmarks/report.py from docs/bench/*.json) -->"
END = "<!-- benchmarks:end -->"
SOURCES = ("matchmaker", "large_dataset", "pilot", "factory", "submission", "hostile",
           "defaults", "record", "history", "scale")

Results = dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One line of the table: `measured` renders the figure; `met` (None: no target) judges
    it against `target`."""

    what: str
    measured: Callable[[Results], str]
    target: str = ""
    met: Callable[[Results], bool] | None = None


def n(value: float, digits: int = 0) -> str:
    """A figure with thousands separators: 2098.8 -> "2,099"."""
    return f"{value:,.{digits}f}"


def _ramp(r: Results, plugin: str) -> dict[str, Any]:
    return r["factory"]["ramp"].get(plugin, {})


def _ramp_seconds(r: Results) -> str:
    figures = []
    for plugin in ("local", "slurm"):
        ramp = _ramp(r, plugin)
        figures.append(n(ramp["seconds_to_target_registered"], 1) + " s"
                       if "seconds_to_target_registered" in ramp else "not run")
    return " / ".join(figures)


def _ramps(r: Results) -> list[dict[str, Any]]:
    return [ramp for plugin in ("local", "slurm")
            if "pilots_registered" in (ramp := _ramp(r, plugin))]


def _null(r: Results) -> list[dict[str, Any]]:
    return r["factory"]["null_tasks"]["by_depth"]


def _no_slowdown(r: Results) -> bool:
    """The deeper queue costs the matchmaker, the one part that sees it, no more CPU per task
    (within 10 %, and the 0.01 ms the figures are rounded to), and the rate is within 5 %: the
    two depths run minutes apart, and the machine's speed drifts by that much between them (the
    tasks' own CPU, which no queue touches, has been seen to differ by 3 %)."""
    shallow, deep = (d["cpu_ms_per_task"]["server"] for d in _null(r))
    return (deep <= 1.1 * shallow + 0.01
            and r["factory"]["null_tasks"]["rate_at_10x_depth_relative"] >= 0.95)


def _submit(r: Results) -> str:
    submit = r["submission"]["submit"]
    if isinstance(submit, str):
        return submit
    figures = [f"{n(1000 * submit[k]['seconds_per_pilot'], 1)} ms"
               for k in ("local_carried", "local_shared", "local_baseline")]
    ssh = submit.get("ssh_carried")
    figures.append(f"{n(1000 * ssh['seconds_per_pilot'], 1)} ms (connecting: "
                   f"{n(1000 * submit['ssh_connect_seconds'])} ms)" if ssh else "not run")
    return " / ".join(figures)


def _history(r: Results) -> tuple[dict[str, Any], dict[str, Any]]:
    """The history benchmark's first level (no ended datasets) and its last."""
    return r["history"]["levels"][0], r["history"]["levels"][-1]


def _no_slowdown_with_history(r: Results) -> bool:
    first, last = _history(r)
    return all(last[k]["median_ms"] <= 1.25 * first[k]["median_ms"]
               for k in ("submit", "report_and_ask"))


def latency_row(source: str) -> Row:
    """The ask latency of a matchmaker benchmark's paced phase (2,000 matches/s offered)."""
    def paced(r: Results) -> dict[str, Any]:
        return r[source]["at_target_rate"]

    return Row(f"{source}: ask latency with 2,000 matches/s offered, p99 (p50; rate served)",
               lambda r: (f"{n(paced(r)['ask_latency_ms']['p99'], 1)} ms "
                          f"({n(paced(r)['ask_latency_ms']['p50'], 1)} ms; "
                          f"{n(paced(r)['matches_per_second'])}/s)"),
               "p99 ≤ 50 ms", lambda r: paced(r)["ask_latency_ms"]["p99"] <= 50)


def rss_row(source: str, most_mb: int) -> Row:
    """The peak memory of a matchmaker benchmark's server and writer, against `most_mb`."""
    return Row(f"{source}: peak RSS of the server and its writer process",
               lambda r: f"{n(r[source]['server_peak_rss_mb'])} MB",
               f"≤ {n(most_mb)} MB", lambda r: r[source]["server_peak_rss_mb"] <= most_mb)


def _first(r: Results) -> dict[str, float]:
    return r["scale"]["submission_to_first_match_ms"]


ROWS = [
    Row("matchmaker: matches per second at saturation (1M queued tasks, 500 pilots, bulk "
        "protocol)",
        lambda r: n(r["matchmaker"]["saturation"]["matches_per_second"]),
        "≥ 2,000", lambda r: r["matchmaker"]["saturation"]["matches_per_second"] >= 2000),
    latency_row("matchmaker"),
    rss_row("matchmaker", 1536),
    Row("matchmaker: CPU per match, server and writer (saturation / 2,000/s offered)",
        lambda r: (f"{r['matchmaker']['saturation']['server_cpu_ms_per_match']:.2f} / "
                   f"{r['matchmaker']['at_target_rate']['server_cpu_ms_per_match']:.2f} ms")),
    Row("matchmaker: 1M tasks in 200 datasets accepted / all matchable",
        lambda r: (f"{n(r['matchmaker']['accept_seconds'], 1)} s / "
                   f"{n(r['matchmaker']['matchable_seconds'], 1)} s")),
    Row("one 1,000,000-job dataset: submit answered / first match / every job created",
        lambda r: (f"{n(1000 * r['large_dataset']['accept_seconds'])} ms / "
                   f"{n(1000 * r['large_dataset']['first_match_seconds'])} ms / "
                   f"{n(r['large_dataset']['all_jobs_created_seconds'], 1)} s")),
    Row("ask p99 while that dataset is being created",
        lambda r: f"{n(r['large_dataset']['ask_latency_ms_meanwhile']['p99'], 1)} ms",
        "no request blocked (≤ 50 ms)",
        lambda r: r["large_dataset"]["ask_latency_ms_meanwhile"]["p99"] <= 50),
    Row("pilot: null tasks per second, 1-CPU slot (short tasks queued in series) / 2-CPU slot",
        lambda r: (f"{n(r['pilot']['serial']['tasks_per_second'])} / "
                   f"{n(r['pilot']['packed']['tasks_per_second'])}"),
        "≥ 100", lambda r: min(r["pilot"]["serial"]["tasks_per_second"],
                              r["pilot"]["packed"]["tasks_per_second"]) >= 100),
    Row("pilot: its own CPU per null task (1-CPU slot)",
        lambda r: f"{r['pilot']['serial']['pilot_cpu_ms_per_task']:.2f} ms",
        "≤ 1 ms", lambda r: r["pilot"]["serial"]["pilot_cpu_ms_per_task"] <= 1.0),
    Row("pilot: per-task overhead one task at a time (prefetch off), median / p99",
        lambda r: (f"{n(r['pilot']['one_at_a_time']['overhead_ms_median'], 1)} / "
                   f"{n(r['pilot']['one_at_a_time']['overhead_ms_p99'], 1)} ms"),
        "median ≤ 10 ms", lambda r: r["pilot"]["one_at_a_time"]["overhead_ms_median"] <= 10),
    Row("factory: 2,000-task backlog to the target number of pilots registered (local / SLURM)",
        _ramp_seconds),
    Row("factory: empty pilots while demand exists (local / SLURM)",
        lambda r: " / ".join(f"{100 * ramp['empty_pilot_fraction']:.0f} %"
                             for ramp in _ramps(r)),
        "≤ 2 %", lambda r: all(ramp["empty_pilot_fraction"] <= 0.02 for ramp in _ramps(r))),
    Row("factory: pilots submitted after the backlog was gone (local / SLURM)",
        lambda r: " / ".join(str(ramp["submitted_after_backlog_gone"]) for ramp in _ramps(r)),
        "0", lambda r: all(ramp["submitted_after_backlog_gone"] == 0 for ramp in _ramps(r))),
    Row("factory: pilots submitted for a site with no matchable work",
        lambda r: str(r["factory"]["no_matchable_work"]["pilots_submitted"]),
        "0", lambda r: r["factory"]["no_matchable_work"]["pilots_submitted"] == 0),
    Row("end to end: null tasks per second, 2 local pilots, 10,000 / 100,000 kept queued, "
        "every attempt recorded",
        lambda r: " / ".join(n(d["null_tasks_per_second"]) for d in _null(r)),
        "≥ 1,000", lambda r: all(d["null_tasks_per_second"] >= 1000
                                 and d["every_attempt_recorded"] for d in _null(r))),
    Row("the same, as a fraction of the machine's bare spawn loops",
        lambda r: " / ".join(f"{f:.2f}" for f in r["factory"]["null_tasks"]["of_bare_spawn_rate"])
        + f" (of {n(r['factory']['machine']['bare_spawn_per_second'])}/s)"),
    Row("end to end: rate with the queue ten times deeper, relative (matchmaker CPU per task "
        "at each depth)",
        lambda r: (f"{r['factory']['null_tasks']['rate_at_10x_depth_relative']:.2f} ("
                   + " / ".join(f"{d['cpu_ms_per_task']['server']:.2f}" for d in _null(r))
                   + " ms)"),
        "no slowdown: the matchmaker's CPU per task within 10 % (it alone sees the queue), the "
        "rate within 5 %", _no_slowdown),
    Row("a pilot's job script: carrying the pilot and its token / `shared_filesystem` / the "
        "bare command (baseline)",
        lambda r: " / ".join(f"{n(r['submission']['script'][k] / 1024, 1)} KiB" for k in
                             ("carried_bytes", "shared_bytes", "baseline_bytes"))),
    Row("job start to the pilot's own code: carried / `shared_filesystem` / bare command "
        "(median)",
        lambda r: " / ".join(f"{n(1000 * r['submission']['start_up_seconds'][k])}" for k in
                             ("carried", "shared", "baseline")) + " ms"),
    Row("sbatch per pilot: carried / `shared_filesystem` / bare command / carried over ssh",
        _submit),
    Row("server memory while 8 clients send 60 MiB log uploads with a wrong passkey (server "
        "defaults): growth at the peak, this build / the build before (baseline)",
        lambda r: f"+{n(r['hostile']['this_build']['grown_at_peak_mib'], 1)} MiB / "
                  f"+{n(r['hostile']['baseline']['grown_at_peak_mib'], 1)} MiB",
        "nothing unproved held", lambda r: r["hostile"]["this_build"]["grown_at_peak_mib"] < 32),
    Row("at the defaults (server and factory, local plugin, 2 pilots of 1 CPU kept by the "
        "factory's default 5-minute idle_timeout, no walltime declared): one task, submit to "
        "seen complete (waiting as `floe wait` does), median (p90), the client on one "
        "kept-alive connection; on a new connection per request",
        lambda r: f"{n(r['defaults']['single_task_ms']['median'], 1)} ms "
                  f"({n(r['defaults']['single_task_ms']['p90'], 1)} ms)" + (
                      f"; {n(r['defaults']['single_task_ms_new_connections']['median'], 1)} ms"
                      if "single_task_ms_new_connections" in r["defaults"] else ""),
        "≤ 5 ms", lambda r: r["defaults"]["single_task_ms"]["median"] <= 5),
    Row("the same: 2,000 / 10,000 tasks submitted, tasks per second until seen complete, "
        "median of 3 runs (fraction of the bare spawn loops measured in the same run)",
        lambda r: " / ".join(f"{n(r['defaults']['tasks_per_second'][k])} "
                             f"({r['defaults']['of_bare_spawn_rate'][k]:.2f})"
                             for k in ("2000", "10000")),
        "≥ 1,400 and ≥ 0.5", lambda r: all(
            r["defaults"]["tasks_per_second"][k] >= 1400
            and r["defaults"]["of_bare_spawn_rate"][k] >= 0.5 for k in ("2000", "10000"))),
    Row("the record: database bytes per attempt without logs (reports with usage and 5 "
        "statistics), and per task of the dataset, at attempts recorded",
        lambda r: (f"{n(r['record']['bytes_per_attempt'])} B; {n(r['record']['bytes_per_task'])}"
                   f" B; at {n(r['record']['attempts'])}"),
        "≤ 1,024 B per attempt", lambda r: r["record"]["bytes_per_attempt"] <= 1024),
    Row("the same dataset archived (floe archive): seconds, archive bytes per attempt, other "
        "writes' wait meanwhile p99 (max), one task's attempts read back",
        lambda r: (f"{n(r['record']['archive']['seconds'], 1)} s; "
                   f"{n(r['record']['archive']['bytes_per_attempt'], 1)} B; "
                   f"{n(r['record']['archive']['other_writes_ms']['p99'], 1)} ms "
                   f"({n(r['record']['archive']['other_writes_ms']['max'], 1)} ms); "
                   f"{n(r['record']['archive']['read_ms']['one_task_attempts'], 1)} ms")),
    Row("a matchmaker that has run many datasets, median with none / with many of the user's "
        "datasets ended: a one-job submit; a pilot's report with its next ask",
        lambda r: "; ".join(
            f"{n(_history(r)[0][k]['median_ms'], 1)} / {n(_history(r)[1][k]['median_ms'], 1)} ms"
            for k in ("submit", "report_and_ask"))
        + f" (at {n(_history(r)[1]['ended_datasets'])} ended)",
        "no slowdown (within 25 %)", _no_slowdown_with_history),
    Row("scale: matches per second at saturation (tasks queued in datasets; pilots, of them "
        "idle and holding asks)",
        lambda r: (f"{n(r['scale']['saturation']['matches_per_second'])} "
                   f"({n(r['scale']['tasks'])} in {n(r['scale']['datasets'])}; "
                   f"{n(r['scale']['pilots'])}, {n(r['scale']['idle_pilots'])} idle)"),
        "≥ 2,000", lambda r: r["scale"]["saturation"]["matches_per_second"] >= 2000),
    latency_row("scale"),
    rss_row("scale", 4096),
    Row("scale: memory the idle pilots add (registered, each holding an ask); their held asks",
        lambda r: f"{n(r['scale']['idle_pilots_add_mb'])} MB; {n(r['scale']['held_asks'])}",
        "≤ 1,024 MB", lambda r: r["scale"]["idle_pilots_add_mb"] <= 1024),
    Row("scale: kill -9 of server and writer, restarted: listening / first match / idle pilots "
        "holding again",
        lambda r: " / ".join(f"{n(r['scale']['restart'][k], 1)} s" for k in
                             ("listening_seconds", "first_match_seconds",
                              "idle_pilots_holding_again_seconds")),
        "first match ≤ 30 s", lambda r: r["scale"]["restart"]["first_match_seconds"] <= 30),
    Row("scale: a new submission to its first match, median (max); the submission answered",
        lambda r: (f"{n(_first(r)['median'], 1)} ms ({n(_first(r)['max'], 1)} ms); "
                   f"{n(_first(r)['submission_answered_median'], 1)} ms")),
    Row("scale: tasks accepted / all matchable; database size; server open files",
        lambda r: (f"{n(r['scale']['accept_seconds'], 1)} s / "
                   f"{n(r['scale']['matchable_seconds'], 1)} s; "
                   f"{n(r['scale']['database_mb'])} MB; {n(r['scale']['server_open_files'])}")),
]


def load(directory: Path = RESULTS) -> Results:
    """Each benchmark's saved output, by name."""
    results = {}
    for name in SOURCES:
        path = directory / f"{name}.json"
        try:
            results[name] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read {path}: {exc}; run `make bench` to make it") from None
    return results


def render(results: Results) -> str:
    """The README block: the table, then the date and yardsticks of each run."""
    lines = [BEGIN, "| what | measured | target | |", "|---|---|---|---|"]
    for row in ROWS:
        verdict = "" if row.met is None else ("met" if row.met(results) else "**missed**")
        lines.append(f"| {row.what} | {row.measured(results)} | {row.target} | {verdict} |")
    lines += ["", "Each run, with the machine's yardsticks that day (a plain Python loop of 10 "
              "million additions; two bare loops starting `/bin/true`, where measured):", ""]
    for name in SOURCES:
        machine = results[name]["machine"]
        spawn = machine.get("bare_spawn_per_second")
        lines.append(f"- `benchmarks/{name}.py` ([JSON](docs/bench/{name}.json)): "
                     f"{machine['date'][:10]}, {machine['cpus']} cores, Python "
                     f"{machine['python']}, loop {machine['python_loop_seconds']:.2f} s"
                     + (f", {n(spawn)} spawns/s" if spawn else ""))
    lines.append(END)
    return "\n".join(lines)


def updated(readme: str, block: str) -> str:
    """README.md's text with the block between the markers replaced."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return readme[:start] + block + readme[end + len(END):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if README.md is out of date, change nothing")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = updated(text, render(load()))
    if args.check:
        sys.exit(0 if new == text else 1)
    README.write_text(new, encoding="utf-8")
    print(f"wrote the benchmark summary into {README}")


if __name__ == "__main__":
    main()
