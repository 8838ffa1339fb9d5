"""A small declarative schema toolkit: describe a JSON or TOML document once, then validate it,
normalize it and document it from that one description.

A schema is a tree of `Kind`s (`Object`, `ListOf`, `MapOf`, `String`, `Integer`, `Size`, ...);
an `Object` holds `Field`s with a name, a kind, a default and a one-line doc. `Kind.validate()`
walks a document, collects every problem it finds (not only the first) as a sentence that names
the path, the value and what was expected, and either returns the normalized document (defaults
filled, sizes in bytes, durations in seconds) or raises `ConfigError` with all the problems.
`config.docs` turns the same tree into Markdown. Nothing here knows about any particular document:
the dataset config, the server settings and the site settings all build on it.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from floe.config.resources import (
    GB,
    KB,
    MB,
    ResourceError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)


class ConfigError(ValueError):
    """A document that does not follow its schema; `problems` holds one sentence per problem."""

    # Enough to fix a document in one go, short enough for a terminal or an HTTP answer.
    SHOWN = 100

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = self.problems[: self.SHOWN]
        hidden = len(self.problems) - len(lines)
        if hidden:
            lines = [*lines, f"... and {hidden} more problems"]
        return "\n".join(lines)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")
"""Default of a field that the document must give."""
OMIT = _Marker("OMIT")
"""Default of an optional field that stays absent from the normalized document when not given."""


def show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it (JSON form), cut short so that a message stays one line."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(value: float) -> str:
    """A bound for a message or a doc: 10000000 -> "10,000,000"."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else repr(value)


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def join_path(path: str, key: str | int) -> str:
    """The path of a child: `tasks` + 2 -> `tasks[2]`, `env` + "SEED" -> `env.SEED`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{show(key)}]"
    return f"{path}.{key}" if path else key


def counted(count: int, noun: str, nouns: str | None = None) -> str:
    """A number of things for a message: `1 pilot`, `2 pilots`, `0 pilots` (`nouns` where the
    plural is not the noun and an s)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def quoted(names: Sequence[str]) -> str:
    """`"a", "b", "c"` for a message listing names."""
    return ", ".join(show(n) for n in names)


def suggestion(word: str, known: Sequence[str]) -> str:
    """`; did you mean "x"?` for a near miss, else the list of what is known."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if close:
        return f'; did you mean {show(close[0])}?'
    if known:
        return f"; known: {quoted(sorted(known))}"
    return ""


class Problems:
    """The problems found so far in one document, each as "path: sentence"."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.paths: list[str] = []
        self.muted: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if path in self.muted:
            return
        self.paths.append(path)
        self.messages.append(f"{path or '(document)'}: {message}")

    def mute(self, paths: set[str]) -> None:
        """Ignore further problems at these paths: a value already reported once (say, an
        expression that could not be resolved) should not be reported again for its type."""
        self.muted |= paths

    def __len__(self) -> int:
        return len(self.messages)

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError(self.messages)


def no_nul(text: str) -> str | None:
    """A `String` rule for text that is handed to a program (an argument, an environment
    value): the operating system cannot pass a NUL character."""
    if "\0" in text:
        return (f"holds a NUL character (\\u0000), which cannot be passed to a program: "
                f"remove it from {show(text)}")
    return None


NO_NUL_SCHEMA = {"pattern": "^[^\\u0000]*$"}
"""What `no_nul` checks, as JSON Schema (the `rule_schema` of a String with that rule)."""


class Kind:
    """One type of value. Subclasses check and normalize values and describe themselves."""

    name = "value"

    def expectation(self) -> str:
        """What a valid value is, after "expected ...": `an integer from 1 to 10`."""
        return f"a {self.name}"

    def constraints(self) -> str:
        """Bounds, patterns or allowed values for the documentation; empty when none."""
        return ""

    def accepts(self, value: Any) -> bool:
        """Whether the value has the right JSON type (bounds aside); used by `Either`."""
        return True

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        """The normalized value; on a problem, adds it and returns the value as given."""
        raise AssertionError(f"{type(self).__name__} must define check()")

    def wrong(self, value: Any, path: str, problems: Problems) -> Any:
        problems.add(path, f"expected {self.expectation()}, got {show(value)}")
        return value

    def validate(self, value: Any, path: str = "") -> Any:
        """The normalized document, or ConfigError listing every problem in it."""
        problems = Problems()
        result = self.check(value, path, problems)
        problems.raise_if_any()
        return result


def _described(noun: str, bounds: str) -> str:
    """`an integer from 1 to 10`, `an integer of at least 1`, `a number greater than 0`."""
    if not bounds:
        return noun
    return f"{noun} of {bounds}" if bounds.startswith("at ") else f"{noun} {bounds}"


def _bounds(minimum: float | None, maximum: float | None, above: bool = False,
            shown: Callable[[Any], str] = number) -> str:
    low = "greater than" if above else "at least"
    if minimum is not None and maximum is not None and not above:
        return f"from {shown(minimum)} to {shown(maximum)}"
    if minimum is not None and maximum is not None:
        return f"{low} {shown(minimum)} and at most {shown(maximum)}"
    if minimum is not None:
        return f"{low} {shown(minimum)}"
    if maximum is not None:
        return f"at most {shown(maximum)}"
    return ""


class String(Kind):
    """Text, optionally matching a pattern; `hint` says in words what the pattern wants, and
    `rule` (text -> a sentence saying what is wrong, or None) adds a check a pattern cannot do.
    `rule_schema` holds the JSON Schema keywords that say what `rule` checks, as far as JSON
    Schema can say it (config.json_schema publishes them)."""

    name = "string"

    def __init__(self, pattern: str | None = None, hint: str | None = None,
                 rule: Callable[[str], str | None] | None = None, min_length: int = 0,
                 rule_schema: Mapping[str, Any] | None = None) -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.hint = hint
        self.rule = rule
        self.min_length = min_length
        self.rule_schema = dict(rule_schema or {})

    def expectation(self) -> str:
        if self.hint:
            return self.hint
        if self.pattern:
            return f"a string matching {self.pattern.pattern}"
        if self.min_length:
            return "a non-empty string"
        return "a string"

    def constraints(self) -> str:
        if self.hint:
            return self.hint
        if self.pattern:
            return f"matches `{self.pattern.pattern}`"
        return "not empty" if self.min_length else ""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, str) or len(value) < self.min_length:
            return self.wrong(value, path, problems)
        if self.pattern and not self.pattern.fullmatch(value):
            return self.wrong(value, path, problems)
        if self.rule:
            complaint = self.rule(value)
            if complaint:
                problems.add(path, complaint)
        return value


class Integer(Kind):
    """A whole number (booleans are not numbers here), optionally within bounds."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def expectation(self) -> str:
        return _described("an integer", _bounds(self.minimum, self.maximum))

    def constraints(self) -> str:
        return _bounds(self.minimum, self.maximum)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if not self.accepts(value) or not _within(value, self.minimum, self.maximum):
            return self.wrong(value, path, problems)
        return value


def _within(value: float, minimum: float | None, maximum: float | None,
            above: bool = False) -> bool:
    if minimum is not None and (value <= minimum if above else value < minimum):
        return False
    return maximum is None or value <= maximum


class Float(Kind):
    """A finite number, normalized to a float; `above=True` makes the minimum exclusive."""

    name = "number"

    def __init__(self, minimum: float | None = None, maximum: float | None = None,
                 above: bool = False) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.above = above

    def expectation(self) -> str:
        return _described("a number", _bounds(self.minimum, self.maximum, self.above))

    def constraints(self) -> str:
        return _bounds(self.minimum, self.maximum, self.above)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if (not self.accepts(value) or not math.isfinite(value)
                or not _within(value, self.minimum, self.maximum, self.above)):
            return self.wrong(value, path, problems)
        return float(value)


class Bool(Kind):
    """true or false; strings such as "yes" are refused rather than guessed."""

    name = "boolean"

    def expectation(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        return value if isinstance(value, bool) else self.wrong(value, path, problems)


class Size(Kind):
    """An amount of memory or disk: "4GB", "512MiB", "2G" (GiB) or bytes; normalized to bytes.

    With `smallest`, a size other than 0 is at least that. Below it (1MB for what a task or a
    pilot shape asks for) a size is a mistake, most often a number meant in MiB that, written
    without a unit, counts bytes: such a number gets a sentence that says so and how to write
    it. The bound holds for sizes with units too, so that a normalized document (bytes) is
    valid again."""

    name = "size"

    def __init__(self, minimum: int | None = None, maximum: int | None = None,
                 smallest: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.smallest = smallest

    def expectation(self) -> str:
        return _described('a size like "4GB"',
                          _bounds(self.minimum, self.maximum, shown=format_size))

    def constraints(self) -> str:
        if not self.smallest:
            return _bounds(self.minimum, self.maximum, shown=format_size)
        most = "" if self.maximum is None else f" and at most {format_size(self.maximum)}"
        return self._least() + most

    def _least(self) -> str:
        least = f"at least {_written(self.smallest or 0)}"
        return f"0 or {least}" if self.minimum is None or self.minimum <= 0 else least

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, str)) and not isinstance(value, bool)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        try:
            size = parse_size(value)
        except ResourceError:
            return self.wrong(value, path, problems)
        if not _within(size, self.minimum, self.maximum):
            return self.wrong(value, path, problems)
        if self.smallest and 0 < size < self.smallest:
            if _without_unit(value):
                written = str(value).strip()
                problems.add(path, f"{show(value)} is {format_size(size)}: a size without a unit "
                                   f"counts bytes, and here it must be {self._least()}; write "
                                   f'"{written}MiB" or "{written}MB" for that many megabytes')
            else:
                problems.add(path, f"{show(value)} is less than {_written(self.smallest)}: here "
                                   f"a size must be {self._least()}")
        return size


def _without_unit(value: Any) -> bool:
    """Whether a size is written as a bare number (512, "512"): a number of bytes."""
    return isinstance(value, int) or not re.search(r"[A-Za-z]", str(value))


def _written(nbytes: int) -> str:
    """A size bound as a config would write it: "1MB" for 10**6, else as format_size shows it."""
    for unit, size in (("GB", GB), ("MB", MB), ("KB", KB)):
        if nbytes % size == 0 and nbytes % 1024:
            return f"{nbytes // size}{unit}"
    return format_size(nbytes)


class Duration(Kind):
    """A span of time: "90s", "2h30m", "1-12:00:00" or seconds; normalized to whole seconds.

    With `smallest`, a duration other than 0 is at least that: below it a value is a mistake,
    most often a number of days or hours written without a unit, which counts seconds; such a
    number gets a sentence that says so."""

    name = "duration"

    def __init__(self, minimum: int | None = None, maximum: int | None = None,
                 smallest: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.smallest = smallest

    def expectation(self) -> str:
        if self.smallest:
            return f'a duration like "2h30m" of {self.constraints()}'
        return _described('a duration like "2h30m"', self.constraints())

    def constraints(self) -> str:
        if not self.smallest:
            return _bounds(self.minimum, self.maximum, shown=format_duration)
        most = "" if self.maximum is None else f" and at most {format_duration(self.maximum)}"
        return f"0 or at least {format_duration(self.smallest)}{most}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (int, float, str)) and not isinstance(value, bool)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        try:
            seconds = parse_duration(value)
        except ResourceError:
            return self.wrong(value, path, problems)
        if not _within(seconds, self.minimum, self.maximum):
            return self.wrong(value, path, problems)
        if self.smallest and (0 < seconds < self.smallest
                              or (seconds == 0 and re.search(r"[1-9]", str(value)))):
            bare = isinstance(value, (int, float)) or re.fullmatch(r"\s*[\d.]+\s*", value)
            said = (f"is {format_duration(seconds)} (a duration without a unit counts seconds)"
                    if bare else f"is less than {format_duration(self.smallest)}")
            problems.add(path, f"{show(value)} {said}: here a duration must be "
                               f'{self.constraints()}, such as "14d" or "12h"')
        return seconds


class Enum(Kind):
    """One of a fixed set of strings."""

    name = "choice"

    def __init__(self, values: Sequence[str]) -> None:
        self.values = tuple(values)

    def expectation(self) -> str:
        return f"one of {quoted(self.values)}"

    def constraints(self) -> str:
        return "one of " + ", ".join(f"`{v}`" for v in self.values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if value in self.values:
            return value
        if isinstance(value, str):
            close = difflib.get_close_matches(value, self.values, n=1, cutoff=0.6)
            if close:
                problems.add(path, f"expected {self.expectation()}, got {show(value)}; "
                                   f"did you mean {show(close[0])}?")
                return value
        return self.wrong(value, path, problems)


class AnyValue(Kind):
    """Any JSON value (null, boolean, number, string, list, object with string keys)."""

    name = "any JSON value"

    def expectation(self) -> str:
        return "a JSON value"

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        bad = _not_json(value, path)
        if bad is not None:
            problems.add(bad[0], f"expected a JSON value, got {show(bad[1])}")
            return value
        return copy.deepcopy(value)


def _not_json(value: Any, path: str) -> tuple[str, Any] | None:
    """The path and value of the first part that JSON cannot hold (a TOML date, a NaN...)."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, list):
        for index, item in enumerate(value):
            bad = _not_json(item, join_path(path, index))
            if bad is not None:
                return bad
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, key)
            bad = _not_json(item, join_path(path, key))
            if bad is not None:
                return bad
        return None
    return (path, value)


class ListOf(Kind):
    """A list whose items are all of one kind, with optional length bounds."""

    name = "list"

    def __init__(self, item: Kind, min_length: int = 0, max_length: int | None = None) -> None:
        self.item = item
        self.min_length = min_length
        self.max_length = max_length

    def _length(self) -> str:
        if self.min_length and self.max_length is not None:
            return f"{number(self.min_length)} to {number(self.max_length)} items"
        if self.min_length:
            return f"at least {number(self.min_length)} item" + ("s" * (self.min_length > 1))
        if self.max_length is not None:
            return f"at most {number(self.max_length)} items"
        return ""

    def expectation(self) -> str:
        length = self._length()
        return f"a list of {length}" if length else "a list"

    def constraints(self) -> str:
        return self._length()

    def accepts(self, value: Any) -> bool:
        return isinstance(value, list)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, list):
            return self.wrong(value, path, problems)
        if len(value) < self.min_length or (
                self.max_length is not None and len(value) > self.max_length):
            problems.add(path, f"expected {self.expectation()}, got {number(len(value))}")
            return value
        return [self.item.check(item, join_path(path, i), problems)
                for i, item in enumerate(value)]


class MapOf(Kind):
    """An object used as a mapping of names (checked by `key`) to values of one kind."""

    name = "mapping"

    def __init__(self, value: Kind, key: String | None = None) -> None:
        self.value = value
        self.key = key or String()

    def expectation(self) -> str:
        return "an object"

    def constraints(self) -> str:
        return f"keys: {self.key.constraints()}" if self.key.constraints() else ""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, Mapping):
            return self.wrong(value, path, problems)
        result = {}
        for key, item in value.items():
            child = join_path(path, key) if isinstance(key, str) else f"{path}[{key!r}]"
            before = len(problems)
            self.key.check(key, child, problems)
            if len(problems) == before:
                result[key] = self.value.check(item, child, problems)
        return result


class Either(Kind):
    """One of several kinds, told apart by JSON type (e.g. a command as a string or a list)."""

    def __init__(self, *options: Kind) -> None:
        self.options = options

    @property
    def name(self) -> str:  # type: ignore[override]
        return " or ".join(type_name(o) for o in self.options)

    def expectation(self) -> str:
        return " or ".join(o.expectation() for o in self.options)

    def constraints(self) -> str:
        return "; ".join(c for c in (o.constraints() for o in self.options) if c)

    def accepts(self, value: Any) -> bool:
        return any(o.accepts(value) for o in self.options)

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        for option in self.options:
            if option.accepts(value):
                return option.check(value, path, problems)
        return self.wrong(value, path, problems)


@dataclass
class Field:
    """One key of an `Object`: its kind, its default (or REQUIRED / OMIT) and its documentation.

    The default is written as a user would write it ("1GiB") and normalized like given values.
    `default_text` replaces the shown default where it is computed (e.g. "module<i>").
    """

    name: str
    kind: Kind
    doc: str
    default: Any = REQUIRED
    details: str = ""
    example: Any = OMIT
    default_text: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Object(Kind):
    """A JSON object with known keys; unknown keys are refused with the nearest known key."""

    name = "object"

    def __init__(self, fields: Sequence[Field], doc: str = "") -> None:
        self.fields = {f.name: f for f in fields}
        if len(self.fields) != len(fields):
            raise ValueError("an Object lists the same field twice")
        self.doc = doc

    def expectation(self) -> str:
        return "an object"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def _belongs(self, key: str) -> str:
        """`; it belongs inside "x"` for a key that is one of field x's own keys (a table
        written a level too high), else ""."""
        for name, spec in self.fields.items():
            inner = spec.kind.item if isinstance(spec.kind, ListOf) else spec.kind
            if isinstance(inner, Object) and key in inner.fields:
                return f"; it belongs inside {show(name)}"
        return ""

    def check(self, value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, Mapping):
            return self.wrong(value, path, problems)
        for key in value:
            if key not in self.fields:
                known = list(self.fields)
                text = key if isinstance(key, str) else repr(key)
                problems.add(join_path(path, text), "unknown key" + (
                    self._belongs(text) or suggestion(text, known)))
        result = {}
        for name, spec in self.fields.items():
            child = join_path(path, name)
            if name in value:
                result[name] = spec.kind.check(value[name], child, problems)
            elif spec.default is REQUIRED:
                problems.add(child, f"missing; expected {spec.kind.expectation()} ({spec.doc})")
            elif spec.default is not OMIT:
                result[name] = spec.kind.check(copy.deepcopy(spec.default), child, problems)
        return result


def type_name(kind: Kind) -> str:
    """The type of a kind in words for the documentation: `list of string`."""
    if isinstance(kind, ListOf):
        inner = type_name(kind.item)
        return f"list of {inner}" if " " in inner else f"list of {inner}s"
    if isinstance(kind, MapOf):
        return f"mapping of name to {type_name(kind.value)}"
    return kind.name


def nested_objects(kind: Kind) -> list[tuple[str, Object]]:
    """The objects inside a kind with the path suffix that leads to them: `[]`, `.<name>`."""
    if isinstance(kind, Object):
        return [("", kind)]
    if isinstance(kind, ListOf):
        return [("[]" + suffix, obj) for suffix, obj in nested_objects(kind.item)]
    if isinstance(kind, MapOf):
        return [(".<name>" + suffix, obj) for suffix, obj in nested_objects(kind.value)]
    if isinstance(kind, Either):
        return [pair for option in kind.options for pair in nested_objects(option)]
    return []


def walk(obj: Object, prefix: str = "") -> list[tuple[str, Field, Object]]:
    """Every field of a schema, depth first, as (documentation path, field, its object)."""
    rows = []
    for spec in obj.fields.values():
        path = f"{prefix}.{spec.name}" if prefix else spec.name
        rows.append((path, spec, obj))
        for suffix, child in nested_objects(spec.kind):
            rows.extend(walk(child, path + suffix))
    return rows


def parse_json(text: str, source: str) -> Any:
    """The JSON value in `text`; a syntax error names `source`, line and column. A key given
    twice in one object is refused, where json.loads would silently keep the last, and so are
    NaN and Infinity, which json.loads takes although JSON has no such values."""
    def no_repeats(pairs: list[tuple[str, Any]]) -> dict:
        result = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError([f"{source}: the key {show(key)} appears twice in one object; "
                                   "keep one"])
            result[key] = value
        return result

    def no_constant(name: str) -> Any:
        raise ConfigError([f"{source}: {name} is not a JSON value; write a number, or a string "
                           "if it is meant as text"])

    try:
        return json.loads(text, object_pairs_hook=no_repeats, parse_constant=no_constant)
    except json.JSONDecodeError as err:
        raise ConfigError([f"{source}: line {err.lineno}, column {err.colno}: {err.msg}"]
                          ) from None


def read_toml(path: str, what: str) -> dict[str, Any]:
    """The document in the TOML file at `path` (`what` names it in errors: "the settings
    file"), as ConfigError when it cannot be read or parsed. Server side only (3.11+)."""
    import tomllib  # imported here: the pilot (Python 3.9) loads this module but never this

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"cannot read {what} {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from None
