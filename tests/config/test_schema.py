"""The schema toolkit: each kind of value, defaults, unknown keys, and every problem at once."""

from __future__ import annotations

import pytest

from floe.config.resources import format_size
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
    ListOf,
    MapOf,
    Object,
    Size,
    String,
    parse_json,
    walk,
)


def problems_of(kind, value) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        kind.validate(value)
    return caught.value.problems


SERVICE = Object([
    Field("name", String(pattern=r"[a-z]+", hint="a lowercase word"), "What it is called."),
    Field("port", Integer(minimum=1, maximum=65535), "Where it listens.", default=8080),
    Field("memory", Size(), "How much memory it may use.", default="1GiB"),
    Field("timeout", Duration(), "How long a request may take.", default="1m"),
    Field("mode", Enum(["fast", "safe"]), "How it commits.", default="safe"),
    Field("tags", ListOf(String(), max_length=2), "Labels.", default=[]),
    Field("limits", Object([
        Field("requests", Integer(minimum=0), "Requests per second.", default=10),
    ]), "Rate limits.", default={}),
    Field("note", String(), "A remark.", default=OMIT),
])


def test_defaults_are_filled_and_normalized_like_given_values():
    assert SERVICE.validate({"name": "web"}) == {
        "name": "web", "port": 8080, "memory": 2**30, "timeout": 60, "mode": "safe",
        "tags": [], "limits": {"requests": 10},
    }


def test_an_omitted_optional_field_stays_absent_and_a_given_one_is_kept():
    assert "note" not in SERVICE.validate({"name": "web"})
    assert SERVICE.validate({"name": "web", "note": "hi"})["note"] == "hi"


def test_defaults_are_not_shared_between_documents():
    first = SERVICE.validate({"name": "a"})
    first["tags"].append("changed")
    assert SERVICE.validate({"name": "b"})["tags"] == []


def test_unknown_key_is_refused_with_the_nearest_known_key():
    assert problems_of(SERVICE, {"name": "web", "prot": 80}) == [
        'prot: unknown key; did you mean "port"?'
    ]


def test_unknown_key_far_from_any_known_key_lists_the_known_keys():
    problem = problems_of(SERVICE.fields["limits"].kind, {"zzz": 1})[0]
    assert problem == 'zzz: unknown key; known: "requests"'


def test_unknown_key_in_a_nested_object_names_its_full_path():
    services = [{"name": "a"}, {"name": "b", "limits": {"reqests": 1}}]
    problems = problems_of(ListOf(SERVICE), services)
    assert problems == ['[1].limits.reqests: unknown key; did you mean "requests"?']


def test_every_problem_is_reported_not_only_the_first():
    problems = problems_of(SERVICE, {"port": 0, "memory": "lots", "timeout": "soon",
                                     "mode": "fats", "tags": ["a", "b", "c"], "extra": 1})
    assert problems == [
        'extra: unknown key; known: "limits", "memory", "mode", "name", "note", "port", '
        '"tags", "timeout"',
        "name: missing; expected a lowercase word (What it is called.)",
        "port: expected an integer from 1 to 65,535, got 0",
        'memory: expected a size like "4GB", got "lots"',
        'timeout: expected a duration like "2h30m", got "soon"',
        'mode: expected one of "fast", "safe", got "fats"; did you mean "fast"?',
        "tags: expected a list of at most 2 items, got 3",
    ]


def test_config_error_lists_one_problem_per_line():
    error = ConfigError(["a: first", "b: second"])
    assert str(error) == "a: first\nb: second"


def test_config_error_shortens_a_very_long_list_of_problems():
    error = ConfigError([f"p{i}: wrong" for i in range(150)])
    lines = str(error).splitlines()
    assert len(lines) == ConfigError.SHOWN + 1
    assert lines[-1] == "... and 50 more problems"
    assert len(error.problems) == 150


def test_string_pattern_must_match_the_whole_value():
    kind = String(pattern=r"[a-z]+", hint="a lowercase word")
    assert kind.validate("abc") == "abc"
    assert problems_of(kind, "abc1") == ['(document): expected a lowercase word, got "abc1"']


def test_string_rule_adds_its_own_sentence():
    kind = String(rule=lambda text: None if text.islower() else f"{text!r} is not lowercase")
    assert kind.validate("ok") == "ok"
    assert problems_of(kind, "NO") == ["(document): 'NO' is not lowercase"]


def test_string_refuses_other_types_and_empty_text_when_asked():
    assert problems_of(String(), 5) == ["(document): expected a string, got 5"]
    assert problems_of(String(min_length=1), "") == [
        '(document): expected a non-empty string, got ""'
    ]


@pytest.mark.parametrize("value", [True, 1.5, "3", None])
def test_integer_refuses_what_is_not_a_whole_number(value):
    assert problems_of(Integer(), value)[0].startswith("(document): expected an integer, got")


def test_integer_bounds_are_inclusive():
    kind = Integer(minimum=1, maximum=3)
    assert [kind.validate(v) for v in (1, 3)] == [1, 3]
    assert problems_of(kind, 4) == ["(document): expected an integer from 1 to 3, got 4"]
    assert problems_of(Integer(minimum=0), -1) == [
        "(document): expected an integer of at least 0, got -1"
    ]


def test_float_normalizes_integers_and_honours_an_exclusive_minimum():
    kind = Float(minimum=0, maximum=10, above=True)
    assert kind.validate(2) == 2.0 and isinstance(kind.validate(2), float)
    assert problems_of(kind, 0) == [
        "(document): expected a number greater than 0 and at most 10, got 0"
    ]
    assert problems_of(kind, float("nan"))[0].startswith("(document): expected a number")
    assert problems_of(kind, True)[0].endswith("got true")


def test_bool_refuses_strings_that_look_like_booleans():
    assert Bool().validate(False) is False
    assert problems_of(Bool(), "yes") == ['(document): expected true or false, got "yes"']


def test_size_is_normalized_to_bytes():
    assert Size().validate("2GB") == 2 * 10**9
    assert Size().validate("2G") == 2 * 2**30
    assert Size().validate(512) == 512
    assert problems_of(Size(), -1) == ['(document): expected a size like "4GB", got -1']


def test_size_bounds_are_shown_as_sizes():
    assert problems_of(Size(minimum=2**20), "1KiB") == [
        '(document): expected a size like "4GB" of at least 1MiB, got "1KiB"'
    ]


def test_duration_is_normalized_to_seconds():
    assert Duration().validate("2h30m") == 9000
    assert Duration().validate("1-00:00:00") == 86400
    assert Duration().validate(90) == 90
    assert problems_of(Duration(minimum=1), 0) == [
        '(document): expected a duration like "2h30m" of at least 1s, got 0'
    ]


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2h", "\u0663:00", "\u0663GB",
                                   float("nan"), float("inf")])
def test_digits_other_than_ascii_and_numbers_that_are_not_finite_are_refused(value):
    kind = Size() if value == "\u0663GB" else Duration()
    assert len(problems_of(kind, value)) == 1  # not an error int() or float() raises


def test_enum_suggests_the_nearest_value_only_when_there_is_one():
    kind = Enum(["full", "normal", "off"])
    assert kind.validate("off") == "off"
    assert problems_of(kind, "ful") == [
        '(document): expected one of "full", "normal", "off", got "ful"; did you mean "full"?'
    ]
    assert problems_of(kind, 3) == ['(document): expected one of "full", "normal", "off", got 3']


def test_list_checks_its_length_and_each_item_with_its_index():
    kind = ListOf(Integer(), min_length=1)
    assert kind.validate([1, 2]) == [1, 2]
    assert problems_of(kind, []) == ["(document): expected a list of at least 1 item, got 0"]
    assert problems_of(kind, [1, "x", 3, "y"]) == [
        '[1]: expected an integer, got "x"', '[3]: expected an integer, got "y"',
    ]
    assert problems_of(kind, {"a": 1}) == ['(document): expected a list of at least 1 item, '
                                           'got {"a": 1}']


def test_mapping_checks_keys_and_values():
    kind = MapOf(Integer(), key=String(pattern=r"[A-Z]+", hint="an uppercase name"))
    assert kind.validate({"A": 1, "B": 2}) == {"A": 1, "B": 2}
    assert problems_of(kind, {"A": "x", "low": 1}) == [
        'A: expected an integer, got "x"',
        'low: expected an uppercase name, got "low"',
    ]


def test_mapping_path_quotes_keys_that_are_not_plain_names():
    problems = problems_of(MapOf(Integer()), {"a b": "x"})
    assert problems == ['["a b"]: expected an integer, got "x"']


def test_any_value_accepts_json_and_refuses_what_json_cannot_hold():
    value = {"a": [1, 2.5, None, True, {"b": "c"}]}
    assert AnyValue().validate(value) == value
    problems = problems_of(AnyValue(), {"a": [1, float("inf")]})
    assert problems == ["a[1]: expected a JSON value, got Infinity"]


def test_either_picks_the_option_by_json_type():
    kind = Either(String(min_length=1), ListOf(String(), min_length=1))
    assert kind.validate("echo hi") == "echo hi"
    assert kind.validate(["echo", "hi"]) == ["echo", "hi"]
    assert problems_of(kind, []) == ["(document): expected a list of at least 1 item, got 0"]
    assert problems_of(kind, 3) == [
        "(document): expected a non-empty string or a list of at least 1 item, got 3"
    ]


def test_object_refuses_a_non_object():
    assert problems_of(SERVICE, [1]) == ["(document): expected an object, got [1]"]


def test_a_field_listed_twice_is_a_programming_error():
    with pytest.raises(ValueError, match="same field twice"):
        Object([Field("a", Integer(), "A."), Field("a", Integer(), "A again.")])


def test_walk_lists_every_field_with_its_documentation_path():
    paths = [path for path, _, _ in walk(Object([
        Field("items", ListOf(SERVICE), "Services."),
        Field("byname", MapOf(SERVICE), "Services by name.", default={}),
    ]))]
    assert paths[:3] == ["items", "items[].name", "items[].port"]
    assert "items[].limits.requests" in paths
    assert "byname.<name>.limits.requests" in paths


def test_json_syntax_error_names_the_source_line_and_column():
    with pytest.raises(ConfigError) as caught:
        parse_json('{\n  "a": 1,\n  "b" 2\n}', "service.json")
    assert str(caught.value) == "service.json: line 3, column 7: Expecting ':' delimiter"


def test_a_key_given_twice_is_refused_instead_of_silently_keeping_the_last():
    with pytest.raises(ConfigError) as caught:
        parse_json('{"jobs": 1, "jobs": 2}', "d.json")
    assert str(caught.value) == 'd.json: the key "jobs" appears twice in one object; keep one'


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_although_json_loads_takes_them(constant):
    with pytest.raises(ConfigError) as caught:
        parse_json('{"steering": {"x": ' + constant + "}}", "d.json")
    assert str(caught.value) == (f"d.json: {constant} is not a JSON value; write a number, or "
                                 "a string if it is meant as text")


def test_a_size_past_what_a_double_holds_is_shown_not_raised():
    """A page showed a stored requirement of 2**4000 bytes (which an older server let in) by
    raising OverflowError."""
    assert format_size(2**4000) == format_size(2**80) == "1073741824PiB"
    assert format_size(2**50) == "1PiB" and format_size(4 * 2**30) == "4GiB"
