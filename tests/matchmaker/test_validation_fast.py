"""The quick conformance predicate gives the same verdict as the checker that names problems,
for every request schema of the API, on valid bodies and on many broken variants of them."""

from __future__ import annotations

import copy
import random

import pytest

from floe.matchmaker.api import schemas
from floe.matchmaker.api.validation import compile_schema, compile_valid, problems

SCHEMAS = {name: value for name, value in vars(schemas).items()
           if isinstance(value, dict) and value.get("type") == "object"}

GOOD = {
    "SLOT": {"cpus": 8, "memory": 2**35, "disk": 2**36, "gpus": 1, "seconds": 86400,
             "os": ["debian12", "linux"], "arch": "x86_64", "site": "x"},
    "HEARTBEAT": {"usage": {"cpu_time": 1.5, "peak_memory": 1000}},
    "REPORT": {"exit_code": 0, "error_class": None, "usage": {"wall_time": 0.01},
               "statistics": {"events": 1.0, "n": 3}, "stdout_tail": "ok",
               "outputs": [{"url": "file:///x", "local": "x", "size": 3}],
               "overuse": {"resource": "memory", "peak": 3.0}},
    "REGISTER": {"host": "node1", "batch_system": "slurm", "resources": {"cpus": 4}},
    "NEW_USER": {"name": "alice", "admin": False, "share": 2},
}
ODD = [None, True, False, 0, -1, 1.5, float("nan"), 2**70, "", "x" * 300, "bad name!", [],
       [1, "a"], {}, {"unknown": 1}, ["debian12"] * 20, -300, 300, "memory", 1e19]


def sample(schema: dict):
    """A simple value of the schema's (first) type, with every property filled in."""
    kind = schema.get("type", "object")
    kind = kind if isinstance(kind, str) else kind[0]
    if kind == "object":
        return {name: sample(sub) for name, sub in schema.get("properties", {}).items()}
    if "enum" in schema:
        return schema["enum"][0]
    return {"integer": 1, "number": 1.0, "string": "a", "boolean": True, "array": [],
            "null": None}[kind]


def mutations(value, rng: random.Random, depth: int = 0):
    """Variants of `value` with one part replaced, removed or added."""
    yield value
    if isinstance(value, dict):
        for key in list(value):
            for odd in rng.sample(ODD, 6):
                changed = copy.deepcopy(value)
                changed[key] = odd
                yield changed
            dropped = copy.deepcopy(value)
            del dropped[key]
            yield dropped
            if depth < 2:
                for inner in mutations(value[key], rng, depth + 1):
                    changed = copy.deepcopy(value)
                    changed[key] = inner
                    yield changed
        extra = copy.deepcopy(value)
        extra["surprise"] = 1
        yield extra
    elif isinstance(value, list):
        for index in range(len(value)):
            for odd in rng.sample(ODD, 4):
                changed = copy.deepcopy(value)
                changed[index] = odd
                yield changed
    else:
        yield from ODD


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_predicate_agrees_with_the_checker(name):
    schema = SCHEMAS[name]
    valid, check = compile_valid(schema), compile_schema(schema)
    rng = random.Random(name)
    seen = 0
    for value in mutations(GOOD.get(name) or sample(schema), rng):
        found: list[str] = []
        check(value, "", found)
        assert valid(value) == (not found), (value, found)
        assert problems(value, schema) == found
        seen += 1
    assert seen > 1


def test_good_bodies_conform():
    for name, body in GOOD.items():
        assert problems(body, SCHEMAS[name]) == [], name
