"""The example datasets in examples/ really run, through the pilot's own runner (the same
staging, environment and statistics file as production), one task at a time."""

from __future__ import annotations

import json
from pathlib import Path

from floe.config import dataset
from floe.pilot.runner import Assignment, TaskResult, run_task

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATASET_ID = 7


def demo(tmp_path: Path) -> dataset.DatasetConfig:
    """The demo dataset with its store and marker directory moved under tmp_path."""
    data = json.loads((EXAMPLES / "demo.json").read_text())
    data["steering"]["store"] = f"file://{tmp_path}/store"
    data["steering"]["flaky_dir"] = str(tmp_path)
    return dataset.validate(data)


def run(config: dataset.DatasetConfig, name: str, job: int, attempt: int,
        workdir: Path) -> TaskResult:
    spec = config.task(name)
    assignment = Assignment(spec.raw, config.steering,
                            dataset.job_args(job, DATASET_ID, config.jobs, name, attempt))
    return run_task(assignment, workdir / f"job{job}-{name}-attempt{attempt}")


def test_one_demo_job_runs_end_to_end_and_reports_statistics(tmp_path):
    config = demo(tmp_path)
    results = {t.name: run(config, t.name, 0, 1, tmp_path) for t in config.topological_order()}
    for name, result in results.items():
        assert result.ok, (name, result.error_message, result.stderr_tail)
    assert results["generate"].statistics["events"] == config.steering["events"]
    assert results["generate"].statistics["energy_mean"] > 0
    assert results["process"].statistics["events"] == config.steering["events"]
    assert 1 <= results["calibrate"].statistics["calibration"] < 2
    summary = json.loads((tmp_path / "store" / "summary_0000.json").read_text())
    assert summary["selected"] == results["process"].statistics["selected"]
    assert all(o["sha256"] for o in results["generate"].outputs)


def test_the_demo_process_task_fails_once_on_purpose_and_succeeds_on_retry(tmp_path):
    config = demo(tmp_path)
    job = config.steering["flaky_every"] - 1
    assert run(config, "generate", job, 1, tmp_path).ok
    first = run(config, "process", job, 1, tmp_path)
    assert first.error_class.value == "task_error"
    assert "failing once on purpose" in first.stderr_tail
    assert run(config, "process", job, 2, tmp_path).ok
    assert list(tmp_path.glob("*.flaky")) == []


def test_other_demo_jobs_pass_process_at_the_first_attempt(tmp_path):
    config = demo(tmp_path)
    assert run(config, "generate", 0, 1, tmp_path).ok
    assert run(config, "process", 0, 1, tmp_path).ok


def test_the_minimal_example_runs(tmp_path):
    config = dataset.load(EXAMPLES / "minimal.json")
    assert run(config, "hello", 2, 1, tmp_path).ok
