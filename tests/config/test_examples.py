"""The examples in examples/: the datasets validate and have the shape the demo promises
(tests/pilot/test_examples.py runs them through the real pilot runner), and so do the factory
configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from floe.config import dataset, expressions
from floe.config.factory import load_factory_config

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


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_factory_config_validates(path):
    config = load_factory_config(path)
    assert config.sites and all(site.shapes for site in config.sites)


def test_the_ssh_example_names_a_login_node_a_proxy_and_a_python():
    (site,) = load_factory_config(EXAMPLES / "cluster-over-ssh.toml").sites
    assert site.ssh["host"] == "icecube@login.cluster.example.edu" and site.ssh["port"] == 22
    assert site.proxy.startswith("http://") and site.python.endswith("python3")
