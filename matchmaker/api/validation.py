"""Checking request bodies against the JSON Schemas that the OpenAPI document publishes.

The API declares each body once, as a JSON Schema; the same schema validates requests here and
appears in /api/v1/openapi.json, so the document always says what the server really accepts.
(The dataset config is checked by `config.dataset` instead, which its published schema is
generated from.) Only the subset of JSON Schema the API uses is supported: type, properties,
required, additionalProperties, dependentRequired, items, enum, minimum, exclusiveMinimum,
maximum, minLength, maxLength, minItems, maxItems, maxProperties and pattern. A problem names
the field by its path in the body (`priority`, `reports[3].exit_code`), as the dataset config's
problems do, and the bounds as the config's reference writes them ("greater than 0").

Each schema is compiled once into nested checking functions, because pilots' reports and asks
are checked thousands of times a second: a predicate that only says whether a value conforms
(no paths, no messages: what almost every request needs), and the checker that names every
problem, run only when the predicate says no. A test holds the two to the same verdict.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from typing import Any

from floe.config.schema import counted, number

from ..bounds import MAX_INT, MIN_INT

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}
_NAMES = {"object": "an object", "array": "a list", "string": "a string",
          "boolean": "true or false", "integer": "a whole number", "number": "a number",
          "null": "null"}

_OBJECT_KEYS = {"properties", "required", "additionalProperties", "dependentRequired",
                "maxProperties"}

Check = Callable[[Any, str, list[str]], None]
Valid = Callable[[Any], bool]
_compiled: dict[int, tuple[dict[str, Any], Valid, Check]] = {}


def problems(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every way `value` breaks `schema`, as sentences naming the path ("" is the body itself);
    [] when it conforms."""
    entry = _compiled.get(id(schema))
    if entry is None or entry[0] is not schema:
        entry = _compiled[id(schema)] = (schema, compile_valid(schema), compile_schema(schema))
    if entry[1](value):
        return []
    found: list[str] = []
    entry[2](value, path, found)
    return found


def conforming(value: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The entries of the object `value` that conform to their property's schema in `schema`
    ({} when `value` is no object): a stored record shown whatever an older server let in."""
    if not isinstance(value, dict):
        return {}
    properties = schema.get("properties", {})
    return {name: item for name, item in value.items()
            if name in properties and not problems(item, properties[name])}


def compile_valid(schema: dict[str, Any]) -> Valid:
    """A predicate: does a value conform to `schema`? (The same verdict as `compile_schema`'s
    checker finding nothing, decided without building paths or messages.)"""
    leaf = _leaf_valid(schema)
    if leaf is not None:
        return leaf
    tests: list[Valid] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        allowed = tuple(t for k in kinds for t in _TYPES[k])
        if ("integer" in kinds or "number" in kinds) and "boolean" not in kinds:
            tests.append(lambda v: isinstance(v, allowed) and v is not True and v is not False)
        else:
            tests.append(lambda v: isinstance(v, allowed))
        if ("integer" in kinds or "number" in kinds) and not _held(schema):
            tests.append(lambda v: type(v) is not int or MIN_INT <= v <= MAX_INT)
    if "enum" in schema:
        options = schema["enum"]
        tests.append(lambda v: v in options)
    if "minimum" in schema or "maximum" in schema:
        low, high = schema.get("minimum"), schema.get("maximum")
        low = float("-inf") if low is None else low
        high = float("inf") if high is None else high
        tests.append(lambda v: isinstance(v, bool) or not isinstance(v, (int, float))
                     or not (v < low or v > high))
    if "exclusiveMinimum" in schema:
        above = schema["exclusiveMinimum"]
        tests.append(lambda v: isinstance(v, bool) or not isinstance(v, (int, float))
                     or not v <= above)
    if {"minLength", "maxLength", "pattern"} & set(schema):
        shortest, longest = schema.get("minLength"), schema.get("maxLength")
        search = _regex(schema["pattern"]).search if "pattern" in schema else None

        def string(v: Any) -> bool:
            if not isinstance(v, str):
                return True
            return not ((shortest is not None and len(v) < shortest)
                        or (longest is not None and len(v) > longest)
                        or (search is not None and not search(v)))
        tests.append(string)
    if {"items", "minItems", "maxItems"} & set(schema):
        fewest, most = schema.get("minItems", 0), schema.get("maxItems")
        item = compile_valid(schema["items"]) if "items" in schema else None

        def array(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            if len(v) < fewest or (most is not None and len(v) > most):
                return False
            return item is None or all(map(item, v))
        tests.append(array)
    if _OBJECT_KEYS & set(schema):
        properties = {name: compile_valid(sub)
                      for name, sub in schema.get("properties", {}).items()}
        required = list(schema.get("required", ()))
        dependent = list(schema.get("dependentRequired", {}).items())
        most = schema.get("maxProperties")
        extra = schema.get("additionalProperties", True)
        extra_valid = compile_valid(extra) if isinstance(extra, dict) else None
        get = properties.get

        def obj(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            if most is not None and len(v) > most:
                return False
            for name in required:
                if name not in v:
                    return False
            for name, needed in dependent:
                if name in v and any(other not in v for other in needed):
                    return False
            for name, item in v.items():
                sub = get(name)
                if sub is not None:
                    if not sub(item):
                        return False
                elif extra is False or (extra_valid is not None and not extra_valid(item)):
                    return False
            return True
        tests.append(obj)
    if not tests:
        return lambda v: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda v: first(v) and second(v)
    return lambda v: all(test(v) for test in tests)


def compile_schema(schema: dict[str, Any]) -> Check:
    """A function that appends to `found` every way a value breaks `schema`."""
    checks: list[Check] = []
    kinds = schema.get("type")
    if kinds is not None:
        checks.append(_type_check([kinds] if isinstance(kinds, str) else list(kinds),
                                  _held(schema)))
    if "enum" in schema:
        checks.append(_enum_check(schema["enum"]))
    if {"minimum", "exclusiveMinimum", "maximum"} & set(schema):
        checks.append(_range_check(schema.get("minimum"), schema.get("maximum"),
                                   schema.get("exclusiveMinimum")))
    if {"minLength", "maxLength", "pattern"} & set(schema):
        checks.append(_string_check(schema))
    if {"items", "minItems", "maxItems"} & set(schema):
        checks.append(_list_check(schema))
    if _OBJECT_KEYS & set(schema):
        checks.append(_object_check(schema))

    def check(value: Any, path: str, found: list[str]) -> None:
        before = len(found)
        for one in checks:
            one(value, path, found)
            if len(found) > before:  # a wrong type or value makes the other checks noise
                return

    return check


def _leaf_valid(schema: dict[str, Any]) -> Valid | None:
    """The predicate of the commonest leaves (a bounded number, a string with a maximum length)
    in one step; None for anything else."""
    kind, keys = schema.get("type"), set(schema) - {"description", "default"}
    if kind in ("integer", "number") and keys == {"type", "minimum", "maximum"}:
        low, high = schema["minimum"], schema["maximum"]
        exact = (int,) if kind == "integer" else (int, float)

        def number(v: Any) -> bool:
            if type(v) in exact:
                return low <= v <= high or v != v  # NaN passes a range check, as in the checker
            return isinstance(v, exact) and not isinstance(v, bool) and not (v < low or v > high)
        if _held(schema):
            return number
        return lambda v: (type(v) is not int or MIN_INT <= v <= MAX_INT) and number(v)
    if kind == "string" and keys == {"type", "maxLength"}:
        longest = schema["maxLength"]
        return lambda v: isinstance(v, str) and len(v) <= longest
    return None


def _regex(pattern: str) -> re.Pattern[str]:
    """A schema's pattern as JSON Schema means it: its `$` ends the text, where Python's `$`
    also matches before a final newline ("name\\n" would pass)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    return re.compile(pattern)


def _held(schema: dict[str, Any]) -> bool:
    """Whether the schema's own bounds keep a whole number within what SQLite stores."""
    return schema.get("minimum", MIN_INT - 1) >= MIN_INT and \
        schema.get("maximum", MAX_INT + 1) <= MAX_INT


def _where(path: str) -> str:
    """The path as a message names it: the body itself has none."""
    return path or "the body"


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_check(kinds: list[str], held: bool = True) -> Check:
    """The check of `kinds`; with `held` False, also of a whole number's 64-bit range (which
    a schema's own bounds, when they are within it, check with their own words)."""
    allowed = tuple(t for k in kinds for t in _TYPES[k])
    numeric = "integer" in kinds or "number" in kinds
    expected = " or ".join(_NAMES[k] for k in kinds)

    def check(value: Any, path: str, found: list[str]) -> None:
        if not isinstance(value, allowed) or (
                numeric and isinstance(value, bool) and "boolean" not in kinds):
            found.append(f"{_where(path)}: expected {expected}, got {_show(value)}")
        elif type(value) is int and not MIN_INT <= value <= MAX_INT and not held:
            found.append(f"{_where(path)}: must be from {MIN_INT} to {MAX_INT} (what storage "
                         f"holds), got {_show(value)}")

    return check


def _enum_check(options: list[Any]) -> Check:
    text = ", ".join(repr(v) for v in options)

    def check(value: Any, path: str, found: list[str]) -> None:
        if value not in options:
            found.append(f"{_where(path)}: expected one of {text}, got {_show(value)}")

    return check


def _range_check(minimum: float | None, maximum: float | None,
                 above: float | None = None) -> Check:
    def check(value: Any, path: str, found: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if minimum is not None and value < minimum:
            found.append(f"{_where(path)}: must be at least {number(minimum)}, got "
                         f"{number(value)}")
        if above is not None and value <= above:
            found.append(f"{_where(path)}: must be greater than {number(above)}, got "
                         f"{number(value)}")
        if maximum is not None and value > maximum:
            found.append(f"{_where(path)}: must be at most {number(maximum)}, got "
                         f"{number(value)}")

    return check


def _string_check(schema: dict[str, Any]) -> Check:
    low, high = schema.get("minLength"), schema.get("maxLength")
    pattern = _regex(schema["pattern"]) if "pattern" in schema else None

    def check(value: Any, path: str, found: list[str]) -> None:
        if not isinstance(value, str):
            return
        if low is not None and len(value) < low:
            found.append(f"{_where(path)}: must have at least {counted(low, 'character')}")
        if high is not None and len(value) > high:
            found.append(f"{_where(path)}: must have at most {counted(high, 'character')}, "
                         f"got {len(value)}")
        if pattern is not None and not pattern.search(value):
            found.append(f"{_where(path)}: {_show(value)} does not match {schema['pattern']}")

    return check


def _list_check(schema: dict[str, Any]) -> Check:
    fewest, most = schema.get("minItems", 0), schema.get("maxItems")
    item = compile_schema(schema["items"]) if "items" in schema else None

    def check(value: Any, path: str, found: list[str]) -> None:
        if not isinstance(value, list):
            return
        if len(value) < fewest:
            found.append(f"{_where(path)}: at least {counted(fewest, 'item')}, got "
                         f"{len(value)}")
            return
        if most is not None and len(value) > most:
            found.append(f"{_where(path)}: at most {counted(most, 'item')}, got {len(value)}")
            return
        if item is not None:
            for index, element in enumerate(value):
                item(element, f"{path}[{index}]", found)

    return check


def _object_check(schema: dict[str, Any]) -> Check:
    properties = {name: compile_schema(sub)
                  for name, sub in schema.get("properties", {}).items()}
    required = list(schema.get("required", ()))
    dependent = list(schema.get("dependentRequired", {}).items())
    most = schema.get("maxProperties")
    extra = schema.get("additionalProperties", True)
    extra_check = compile_schema(extra) if isinstance(extra, dict) else None
    names = list(properties)

    def check(value: Any, path: str, found: list[str]) -> None:
        if not isinstance(value, dict):
            return
        if most is not None and len(value) > most:
            found.append(f"{_where(path)}: at most {counted(most, 'entry', 'entries')}, got "
                         f"{len(value)}")
            return
        for name in required:
            if name not in value:
                found.append(f"{_child(path, name)}: required")
        for name, needed in dependent:
            for other in needed:
                if name in value and other not in value:
                    found.append(f"{_child(path, other)}: required with {name}")
        for name, item in value.items():
            sub = properties.get(name)
            if sub is not None:
                sub(item, _child(path, name), found)
            elif extra is False:
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f'; did you mean "{close[0]}"?' if close else \
                    f" (known: {', '.join(names)})"
                found.append(f"{_child(path, str(name))}: unknown key{hint}")
            elif extra_check is not None:
                extra_check(item, _child(path, name), found)

    return check


def _show(value: Any) -> str:
    """`value` as JSON writes it (null, true, [1, 2], "text" unescaped), cut to 60 characters;
    a whole number of more than 40 digits by its count of digits."""
    if type(value) is int and abs(value) >= 10**40:
        return f"a whole number of {len(str(abs(value)))} digits"
    if isinstance(value, str):
        text = f'"{value}"'
    else:
        try:
            text = json.dumps(value)
        except ValueError:  # a whole number too long to write, deep inside
            text = f"a {type(value).__name__} holding a very long number"
    return text if len(text) <= 60 else text[:57] + "..."
