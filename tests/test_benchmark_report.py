"""The benchmark table of README.md is made from the committed runs in docs/bench/, and judges
each figure against its target from the figure itself."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_made_from_the_committed_benchmark_runs():
    readme = report.README.read_text(encoding="utf-8")
    assert report.updated(readme, report.render(report.load())) == readme, (
        "README.md's benchmark table is out of date with docs/bench/*.json; run "
        "`python benchmarks/report.py` (make bench does) and commit it")


def row_of(table: str, what: str) -> list[str]:
    [line] = [line for line in table.splitlines() if line.startswith(f"| {what} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_figure_past_its_target_reads_missed_and_one_within_reads_met():
    results = report.load()
    latency = "matchmaker: ask latency with 2,000 matches/s offered, p99 (p50; rate served)"
    null = ("end to end: null tasks per second, 2 local pilots, 10,000 / 100,000 kept queued, "
            "every attempt recorded")
    slow = copy.deepcopy(results)
    slow["matchmaker"]["at_target_rate"]["ask_latency_ms"]["p99"] = 50.5
    slow["factory"]["null_tasks"]["by_depth"][1]["null_tasks_per_second"] = 999.9
    fast = copy.deepcopy(results)
    fast["matchmaker"]["at_target_rate"]["ask_latency_ms"]["p99"] = 50.0
    for depth in fast["factory"]["null_tasks"]["by_depth"]:
        depth.update(null_tasks_per_second=1000.0, every_attempt_recorded=True)
    assert row_of(report.render(slow), latency)[1:] == [
        f"50.5 ms ({report.n(results['matchmaker']['at_target_rate']['ask_latency_ms']['p50'], 1)}"
        f" ms; {report.n(results['matchmaker']['at_target_rate']['matches_per_second'])}/s)",
        "p99 ≤ 50 ms", "**missed**"]
    assert row_of(report.render(slow), null)[3] == "**missed**"
    assert row_of(report.render(fast), latency)[3] == "met"
    assert row_of(report.render(fast), null)[1:] == ["1,000 / 1,000", "≥ 1,000", "met"]
    unrecorded = copy.deepcopy(fast)
    unrecorded["factory"]["null_tasks"]["by_depth"][0]["every_attempt_recorded"] = False
    assert row_of(report.render(unrecorded), null)[3] == "**missed**"


def test_a_deeper_queue_that_costs_the_matchmaker_more_per_task_is_a_slowdown():
    results = report.load()
    deeper = "end to end: rate with the queue ten times deeper, relative (matchmaker CPU per task "\
        "at each depth)"
    shallow, deep = results["factory"]["null_tasks"]["by_depth"]
    for rate, server, verdict in ((1.0, 0.10, "met"), (0.96, 0.11, "met"),
                                  (1.0, 0.13, "**missed**"), (0.94, 0.10, "**missed**")):
        shallow["cpu_ms_per_task"]["server"] = 0.10
        deep["cpu_ms_per_task"]["server"] = server
        results["factory"]["null_tasks"]["rate_at_10x_depth_relative"] = rate
        assert row_of(report.render(results), deeper)[3] == verdict, (rate, server)


@pytest.mark.parametrize("name", sorted(
    path.stem for path in (ROOT / "benchmarks").glob("*.py")
    if "__main__" in path.read_text(encoding="utf-8")))
def test_every_benchmark_starts_as_make_bench_runs_it(name):
    """Each benchmark's imports resolve when it is run as a script (`--help` stops there)."""
    done = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
