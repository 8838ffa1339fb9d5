"""The JSON Schema generated from the config toolkit says what the validator says: kind by kind
on chosen values, and for dataset configs on the examples, the configs the test suite submits
and a set of configs that the validator refuses. Checked with the `jsonschema` library, an
implementation that floe does not share."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from floe.config import dataset
from floe.config.json_schema import json_schema
from floe.config.resources import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    ResourceError,
    parse_duration,
    parse_size,
)
from floe.config.schema import (
    OMIT,
    AnyValue,
    Bool,
    ConfigError,
    Duration,
    Either,
    Enum,
    Field,
    Float,
    Integer,
    Kind,
    ListOf,
    MapOf,
    Object,
    Size,
    String,
)
from tests.config.test_dataset import SHA, document, task
from tests.matchmaker import support

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCHEMA = dataset.json_schema()
VALIDATOR = Draft202012Validator(SCHEMA)


def schema_takes(kind: Kind, value) -> bool:
    return Draft202012Validator(json_schema(kind)).is_valid(value)


def validator_takes(kind: Kind, value) -> bool:
    try:
        kind.validate(value)
    except ConfigError:
        return False
    return True


def dataset_takes(data) -> bool:
    try:
        dataset.validate(copy.deepcopy(data))
    except ConfigError:
        return False
    return True


# (kind, values it takes, values it refuses): the schema must give the validator's verdict.
NAME = String(pattern=r"[a-z]+")
VERDICTS = {
    "string with a pattern": (NAME, ["abc"], ["abc1", "", "ABC", 5, None]),
    "non-empty string": (String(min_length=1), ["x"], ["", ["x"]]),
    "integer with bounds": (Integer(1, 10), [1, 10], [0, 11, True, "3", 2.5, None]),
    "integer from 0": (Integer(minimum=0), [0, 2**40], [-1]),
    "number above a bound": (Float(0, 1000, above=True), [0.001, 1, 1000],
                             [0, -1, 1000.5, False, "1"]),
    "number from a bound": (Float(0, 10), [0, 10, 2.5], [-0.1, 10.1]),
    "boolean": (Bool(), [True, False], ["yes", 1, 0, None]),
    "size": (Size(), [0, 4, 2**40, "4GB", "512MiB", "2G", " 1.5 kib ", "10", "7b", "3 TB"],
             [-1, "lots", "4GBs", "4 XB", "", "1e3", "1.5.2GB", "GB", True, 1.5, None, [1]]),
    "size with bounds": (Size(1024, 2**30), [1024, 2**30, "1MiB"], [1023, 2**30 + 1]),
    "size of 0 or at least 1MB": (Size(smallest=10**6), [0, 10**6, 2**30, "1MB", "4GiB"],
                                  [1, 1024, 10**6 - 1]),
    "duration": (Duration(), [0, 3600, 1.5, "90s", "2h30m", "2h 30m", "1-12:00:00", "12:30",
                              "01:02:03", " 45 ", "1.5h", "1D", "3 m 2 s"],
                 [-1, "soon", "1.5", "2h30", "1:2:3:4", "1:234", "h", "", True, None]),
    "duration with bounds": (Duration(1, 3600), [1, 3600, 3600.5, "1h"], [0, 0.5, 3601]),
    "duration of 0 or at least 1h": (Duration(0, 86400, smallest=3600),
                                     [0, 3600, 3600.5, "1h", "14h"], [0.5, 14, 3599.5]),
    "choice": (Enum(("full", "normal")), ["full", "normal"], ["Full", "", 1, None]),
    "any JSON value": (AnyValue(), [None, 1, "x", [1, {"a": None}], {"b": [True]}], []),
    "list with bounds": (ListOf(Integer(), 1, 2), [[1], [1, 2]], [[], [1, 2, 3], ["a"], "x"]),
    "mapping with checked keys": (MapOf(Integer(), key=String(pattern=r"[A-Z]+")),
                                  [{}, {"A": 1, "BC": 2}], [{"a": 1}, {"A": "x"}, [], "A"]),
    "string or list": (Either(String(min_length=1), ListOf(String(), min_length=1)),
                       ["x", ["a", "b"]], ["", [], [1], 3, None]),
    # Either gives a value to the first option that takes its JSON type, and only to it.
    "overlapping options": (Either(Integer(minimum=1), Float()), [5, 0.5, -0.5], [0, -3, "1"]),
    "integer or duration": (Either(Integer(minimum=5), Duration()), [5, 3.5, "1h"], [3, "x"]),
    "object": (Object([Field("a", Integer(), "A."), Field("b", NAME, "B.", default="x"),
                       Field("c", Bool(), "C.", default=OMIT)]),
               [{"a": 1}, {"a": 1, "b": "y", "c": True}],
               [{}, {"b": "y"}, {"a": 1, "d": 2}, {"a": "1"}, [], None]),
}


@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_the_schema_of_each_kind_gives_the_validators_verdict(case):
    kind, taken, refused = VERDICTS[case]
    for value in taken:
        assert validator_takes(kind, value), value  # the table itself is right
        assert schema_takes(kind, value), value
    for value in refused:
        assert not validator_takes(kind, value), value
        assert not schema_takes(kind, value), value


def test_every_generated_schema_is_valid_json_schema_2020_12():
    Draft202012Validator.check_schema(SCHEMA)
    for kind, _, _ in VERDICTS.values():
        Draft202012Validator.check_schema(json_schema(kind))


@pytest.mark.parametrize("text", [
    "0", "4GB", "4gb", "4 GiB", "4G", "4g", "1.5T", "512MiB", "7B", "10", " 3 kb ", "2KiB",
    "lots", "4GBs", "4 XB", "", " ", "1e3", "-4GB", "4.GB", ".5GB", "4GiBB", "4 G B", "kib",
])
def test_the_size_pattern_takes_exactly_what_parse_size_takes(text):
    try:
        parse_size(text)
        parsed = True
    except ResourceError:
        parsed = False
    assert (re.search(SIZE_PATTERN, text) is not None) == parsed


@pytest.mark.parametrize("text", [
    "0", "3600", " 45 ", "90s", "45m", "2h30m", "2h 30m", "1d", "1.5h", "1D2H", "2 h",
    "1-12:00:00", "12:30", "01:02:03", "1-2:3", "soon", "", "1.5", "2h30", "1:2:3:4", "1:234",
    "h", "-1", "1-2", "2h-30m", "1.h", "30m2", "1:2:345",
])
def test_the_duration_pattern_takes_exactly_what_parse_duration_takes(text):
    try:
        parse_duration(text)
        parsed = True
    except ResourceError:
        parsed = False
    assert (re.search(DURATION_PATTERN, text) is not None) == parsed


def test_objects_say_which_keys_they_take_and_need_with_docs_defaults_and_examples():
    schema = json_schema(Object([
        Field("count", Integer(minimum=1), "How many.", default=3, example=5,
              details="More is slower."),
        Field("name", String(), "Who.", default=OMIT, default_text="the user's name"),
        Field("size", Size(), "How big."),
    ], doc="A test object."))
    assert schema["required"] == ["size"]
    assert schema["additionalProperties"] is False
    assert schema["description"] == "A test object."
    assert schema["properties"]["count"] == {
        "type": "integer", "minimum": 1, "description": "How many. More is slower.",
        "default": 3, "examples": [5]}
    assert schema["properties"]["name"]["description"] == "Who. Default: the user's name."
    assert "default" not in schema["properties"]["name"]


def test_every_default_and_example_of_the_dataset_schema_is_valid_under_it():
    def nodes(node):
        yield node
        for sub in node.get("properties", {}).values():
            yield from nodes(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from nodes(node[key])
        for option in node.get("anyOf", []):
            yield from nodes(option)

    seen = 0
    for node in nodes(SCHEMA):
        for value in [*([node["default"]] if "default" in node else []),
                      *node.get("examples", [])]:
            assert Draft202012Validator(node).is_valid(value), (node, value)
            seen += 1
    assert seen > 20


def test_also_takes_its_schema_at_every_depth_inside_the_kind_it_names_only():
    inner = Object([Field("n", Integer(), "N."), Field("tags", ListOf(String()), "T.")])
    outer = Object([Field("inner", inner, "I."), Field("m", Integer(), "M.")])
    expression = {"type": "string", "pattern": r"^\$"}
    validator = Draft202012Validator(json_schema(outer, also={inner: expression}))
    assert validator.is_valid({"inner": {"n": "$x", "tags": "$y"}, "m": 1})
    assert validator.is_valid({"inner": "$whole", "m": 1})
    assert validator.is_valid({"inner": {"n": 1, "tags": ["$z", "plain"]}, "m": 1})
    assert not validator.is_valid({"inner": {"n": "x", "tags": []}, "m": 1})
    assert not validator.is_valid({"inner": {"n": 1, "tags": []}, "m": "$m"})


# ---------------------------------------------------------------- dataset configs

def _steered(**requirements) -> dict:
    return document(steering={"cores": 4, "gb": 3, "hours": "2h", "os": ["el9"],
                              "req": {"cpus": 2, "memory": "2GB"}},
                    tasks=[task("t", requirements=requirements)])


# The valid configs of tests/config/test_dataset.py and tests/matchmaker (support.config).
VALID = {
    "the base document": document(),
    "a minimal document": {"jobs": 1, "tasks": [task("only")]},
    "every requirement": document(tasks=[task("t", requirements={
        "cpus": 4, "memory": "4GB", "disk": "2GiB", "gpus": 1, "walltime": "1-00:00:00",
        "os": ["el9"], "arch": ["x86_64"], "sites": ["uw-*"], "exclude_sites": ["bad"]})]),
    "files and expressions": document(priority=2, tasks=[
        task("gen", requirements={"memory": "$eval($steering(seed) * 1000000)",
                                  "walltime": "2h"},
             inputs=[{"url": "https://example.org/gen.py", "local": "gen.py", "checksum": SHA}],
             outputs=[{"local": "out.txt", "url": "file:///data/out_$args(job).txt"}]),
        task("sum", depends=["gen"], env={"E": "$choice($steering(energies))"})]),
    "requirements from steering": _steered(
        cpus="$steering(cores)", memory="$eval($steering(gb) * 1000000000)",
        disk='$sprintf("%dGB", $steering(gb))', walltime="$steering(hours)",
        os="$steering(os)"),
    "requirements as one expression": document(
        steering={"req": {"cpus": 2, "memory": "2GB"}},
        tasks=[{**task("t"), "requirements": "$steering(req)"}]),
    "requirements with whole numbers from $eval": _steered(cpus="$eval(8 / 2)"),
    "urls of every kind": document(steering={"base": "http://mirror"}, tasks=[task(
        "t", inputs=[{"url": "/cvmfs/x", "local": "a"}, {"url": "file:///x", "local": "b"},
                     {"url": "HTTPS://example.org/x", "local": "c/d.txt"},
                     {"url": "$steering(base)/x", "local": "..e"},
                     {"url": "/x", "local": "f", "checksum": "md5:" + "a" * 32}],
        outputs=[{"local": "a", "url": "http://store/x_$args(job)"}])]),
    "commands, modules and environments": document(tasks=[task("t", env={"OK": "1"}, modules=[
        {"name": "first", "command": 'echo "$HOME" $$ ${USER}', "env": {"_X1": "$args(task)"}},
        {"command": ["true"]}])]),
    "every top-level field": document(description="costs $5 and $foo(bar)", priority=0.5,
                                      max_retries=0, debug=True),
    "site values": document(tasks=[task("t", env={"D": "$system(anything)"})]),
    "the matchmaker tests' config": support.config(),
    "the matchmaker tests' mixed tasks": support.config(jobs=2, tasks=[
        support.task("small"), support.task("wide", cpus=4, memory="6GiB"),
        support.task("long", ["small"], cpus=2, memory="3GiB", walltime="3h"),
        support.task("gpu", cpus=1, gpus=1, memory="2GiB")]),
}


def _changed(path: str, value) -> dict:
    """The base document with the value at `path` (dotted, list indices as numbers) replaced;
    `...` as the value deletes it."""
    data = document(tasks=[task("generate", requirements={"cpus": 1}),
                           task("filter", ["generate"])])
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


# Configs the validator refuses for a reason that the schema can say too.
INVALID = {
    "not an object": [1, 2],
    "an unknown top-level key": _changed("owner", "alice"),
    "an unknown task key": _changed("tasks.0.requirments", {}),
    "an unknown requirement": _changed("tasks.0.requirements.gpu", 1),
    "an unknown module key": _changed("tasks.0.modules.0.cmd", "true"),
    "no jobs": _changed("jobs", ...),
    "no tasks": _changed("tasks", ...),
    "zero jobs": _changed("jobs", 0),
    "too many jobs": _changed("jobs", dataset.MAX_JOBS + 1),
    "jobs as a string": _changed("jobs", "10"),
    "jobs as a fraction": _changed("jobs", 2.5),
    "a zero priority": _changed("priority", 0),
    "too many retries": _changed("max_retries", dataset.MAX_RETRIES + 1),
    "debug as a string": _changed("debug", "yes"),
    "a description that is not text": _changed("description", 5),
    "a bad steering name": _changed("steering", {"1bad": 1}),
    "steering as a list": _changed("steering", [1]),
    "an empty task list": _changed("tasks", []),
    "too many tasks": _changed("tasks", [task(f"t{i}") for i in range(dataset.MAX_TASKS + 1)]),
    "a task without a name": _changed("tasks.0.name", ...),
    "a bad task name": _changed("tasks.0.name", "bad name"),
    "a dependency that is not a name": _changed("tasks.1.depends", [1]),
    "no modules": _changed("tasks.0.modules", []),
    "an empty command": _changed("tasks.0.modules.0.command", ""),
    "an empty argv": _changed("tasks.0.modules.0.command", []),
    "a command that is a number": _changed("tasks.0.modules.0.command", 5),
    "an argv with a number": _changed("tasks.0.modules.0.command", ["sleep", 5]),
    "a bad module name": _changed("tasks.0.modules.0.name", "a b"),
    "a bad environment name": _changed("tasks.0.env", {"1X": "a"}),
    "an environment value that is a number": _changed("tasks.0.env", {"OK": 2}),
    "a bad size": _changed("tasks.0.requirements.memory", "lots"),
    "a size with a bad unit": _changed("tasks.0.requirements.memory", "4GBs"),
    "a negative size": _changed("tasks.0.requirements.disk", -1),
    "a fractional size in bytes": _changed("tasks.0.requirements.disk", 1.5),
    "a bad duration": _changed("tasks.0.requirements.walltime", "soon"),
    "a zero walltime": _changed("tasks.0.requirements.walltime", 0),
    "negative cpus": _changed("tasks.0.requirements.cpus", -1),
    "zero cpus": _changed("tasks.0.requirements.cpus", 0),
    "cpus as a numeric string": _changed("tasks.0.requirements.cpus", "4"),
    "cpus as a boolean": _changed("tasks.0.requirements.cpus", True),
    "negative gpus": _changed("tasks.0.requirements.gpus", -1),
    "a per-job function in requirements": _changed("tasks.0.requirements.cpus", "$args(job)"),
    "a choice in requirements": _changed("tasks.0.requirements.gpus", "$choice(1, 2)"),
    "os as a plain string": _changed("tasks.0.requirements.os", "el9"),
    "an empty os pattern": _changed("tasks.0.requirements.os", [""]),
    "requirements as a list": _changed("tasks.0.requirements", [1]),
    "an input without local": _changed("tasks.0.inputs", [{"url": "/x"}]),
    "an input url of another scheme": _changed("tasks.0.inputs",
                                               [{"url": "ftp://x/y", "local": "y"}]),
    "an input url that is a relative path": _changed("tasks.0.inputs",
                                                     [{"url": "x.txt", "local": "y"}]),
    "an output url that is a path": _changed("tasks.0.outputs", [{"local": "x", "url": "/d/x"}]),
    "a local path leaving the scratch directory": _changed(
        "tasks.0.inputs", [{"url": "/x", "local": "a/../../b"}]),
    "a local path that is only ..": _changed("tasks.0.inputs", [{"url": "/x", "local": ".."}]),
    "an absolute local path": _changed("tasks.0.outputs",
                                       [{"local": "/etc/passwd", "url": "file:///x"}]),
    "an empty local path": _changed("tasks.0.outputs", [{"local": "", "url": "file:///x"}]),
    "a sha1 checksum": _changed("tasks.0.inputs", [{"url": "/x", "local": "a",
                                                    "checksum": "sha1:" + "a" * 40}]),
    "a short checksum": _changed("tasks.0.inputs", [{"url": "/x", "local": "a",
                                                     "checksum": "sha256:abc"}]),
}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.name)
def test_every_example_is_valid_under_the_schema(path):
    assert VALIDATOR.is_valid(dataset.load(path).raw)  # its normalized form, too
    assert list(VALIDATOR.iter_errors(json.loads(path.read_text(encoding="utf-8")))) == []


@pytest.mark.parametrize("name", sorted(VALID))
def test_the_test_suites_valid_configs_and_their_normalized_forms_are_valid_under_it(name):
    config = dataset.validate(copy.deepcopy(VALID[name]))
    assert list(VALIDATOR.iter_errors(VALID[name])) == []
    assert list(VALIDATOR.iter_errors(config.raw)) == []


@pytest.mark.parametrize("name", sorted(INVALID))
def test_configs_the_validator_refuses_are_refused_by_the_schema(name):
    assert not dataset_takes(INVALID[name])
    assert not VALIDATOR.is_valid(INVALID[name])


def test_what_only_the_validator_checks_is_named_in_the_description():
    beyond = {
        "same": document(tasks=[task("a"), task("a")]),
        "unknown task": document(tasks=[task("a", ["b"])]),
        "cycle": document(tasks=[task("a", ["b"]), task("b", ["a"])]),
        "steering value": document(tasks=[task("a", env={"X": "$steering(nope)"})]),
        "parse": document(tasks=[task("a", env={"X": "$eval(1 +)"})]),
    }
    for words, data in beyond.items():
        assert VALIDATOR.is_valid(data) and not dataset_takes(data), words
        assert words in SCHEMA["description"]
