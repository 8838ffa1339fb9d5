"""The example datasets in examples/: they validate and have the shape the demo promises.
tests/pilot/test_examples.py runs them through the real pilot runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import dataset, expressions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_validates(path):
    config = dataset.load(path)
    assert config.tasks


def test_the_demo_is_a_dag_of_about_twenty_jobs():
    config = dataset.load(EXAMPLES / "demo.json")
    assert config.jobs == 20
    assert [t.name for t in config.topological_order()] == [
        "generate", "process", "calibrate", "summarize"]
    assert config.task("summarize").depends == (1, 2)


def test_the_demo_uses_every_expression_function_but_system():
    text = (EXAMPLES / "demo.json").read_text()
    for function in set(expressions.FUNCTIONS) - {"system"}:
        assert f"${function}(" in text, function
