r"""JSON Schema (2020-12, the dialect of OpenAPI 3.1) from the declarative schemas of
`config.schema`, so that an API document can publish what a validator really accepts.

`json_schema(kind)` describes a value the way `kind.validate()` judges it: JSON types, bounds,
patterns (anchored: the validator matches whole strings), allowed values, required keys, no
unknown keys in an `Object`, and each field's doc, default and example. A size or a duration
takes its number or its written form ("4GB", "2h30m"), as the validator does, and `Either`
gives each option only the JSON types that no earlier option takes, as the validator picks
them. Some checks are beyond JSON Schema: a `String`'s `rule` (unless its `rule_schema` says
what it checks), the bounds of a size or duration written as a string, what a document checks
across its fields, and JSON's data model itself (2.0 is an integer there, not in Python). So
the schema may take a value that the validator then refuses with a sentence saying why, but
what the schema refuses the validator refuses too (with Python's regular expressions, where
`\d` is any decimal digit; an ECMA-262 engine takes only 0-9). `also` describes the parts of a
document that are rewritten before they are validated (the dataset config's requirements,
whose expressions are resolved at submit time): a schema that is taken there besides every
value.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from floe.config.resources import DURATION_PATTERN, SIZE_PATTERN
from floe.config.schema import (
    OMIT,
    REQUIRED,
    Bool,
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

Schema = dict[str, Any]


def json_schema(kind: Kind, also: Mapping[Kind, Mapping[str, Any]] | None = None) -> Schema:
    """The JSON Schema of the values `kind` accepts. `also` maps kinds inside `kind` (the very
    objects) to a schema taken besides every value inside them, at every depth."""
    return _Writer(also or {}).schema(kind, None)


def _json_types(kind: Kind) -> set[str] | None:
    """The JSON types `kind.accepts()` (before bounds); None for every value."""
    if isinstance(kind, (String, Enum)):
        return {"string"}
    if isinstance(kind, Integer):
        return {"integer"}
    if isinstance(kind, Float):
        return {"number"}
    if isinstance(kind, Bool):
        return {"boolean"}
    if isinstance(kind, Size):
        return {"integer", "string"}
    if isinstance(kind, Duration):
        return {"number", "string"}
    if isinstance(kind, ListOf):
        return {"array"}
    if isinstance(kind, (MapOf, Object)):
        return {"object"}
    if isinstance(kind, Either):
        union: set[str] = set()
        for option in kind.options:
            types = _json_types(option)
            if types is None:
                return None
            union |= types
        return union
    return None


def _overlap(one: set[str] | None, other: set[str]) -> bool:
    """Whether a value may have one of the types in `one` and one of those in `other` (every
    integer is a number)."""
    if one is None:
        return bool(other)
    widened = {*one, "integer"} if "number" in one else one
    return bool(widened & ({*other, "integer"} if "number" in other else other))


class _Writer:
    def __init__(self, also: Mapping[Kind, Mapping[str, Any]]) -> None:
        self.also = also

    def schema(self, kind: Kind, extra: Mapping[str, Any] | None,
               alternative: bool = True) -> Schema:
        """`kind`'s schema, or (inside a part that `also` names) it or `extra`; an option of
        an `Either` leaves that to the `Either` (`alternative=False`)."""
        extra = self.also.get(kind, extra)
        node = self.describe(kind, extra)
        if extra is not None and alternative:
            return {"anyOf": [node, copy.deepcopy(dict(extra))]}
        return node

    def describe(self, kind: Kind, extra: Mapping[str, Any] | None) -> Schema:
        if isinstance(kind, String):
            return _string(kind)
        if isinstance(kind, Integer):
            return _bounded({"type": "integer"}, kind.minimum, kind.maximum)
        if isinstance(kind, Float):
            node: Schema = {"type": "number"}
            if kind.minimum is not None:
                node["exclusiveMinimum" if kind.above else "minimum"] = kind.minimum
            if kind.maximum is not None:
                node["maximum"] = kind.maximum
            return node
        if isinstance(kind, Bool):
            return {"type": "boolean"}
        if isinstance(kind, Size):
            # A number of bytes is a whole number, never negative.
            node = _bounded({"type": ["integer", "string"], "pattern": SIZE_PATTERN},
                            max(kind.minimum or 0, 0), kind.maximum)
            if kind.smallest:  # a string's bytes are beyond a pattern: the validator says
                node["not"] = {"type": "integer", "exclusiveMinimum": 0,
                               "exclusiveMaximum": kind.smallest}
            return node
        if isinstance(kind, Duration):
            # Seconds are truncated to whole ones before the bounds apply: 3600.5 is 3600.
            node = {"type": ["number", "string"], "pattern": DURATION_PATTERN,
                    "minimum": max(kind.minimum or 0, 0)}
            if kind.maximum is not None:
                node["exclusiveMaximum"] = kind.maximum + 1
            if kind.smallest:  # a string's seconds are beyond a pattern: the validator says
                node["not"] = {"type": "number", "exclusiveMinimum": 0,
                               "exclusiveMaximum": kind.smallest}
            return node
        if isinstance(kind, Enum):
            return {"type": "string", "enum": list(kind.values)}
        if isinstance(kind, ListOf):
            node = {"type": "array", "items": self.schema(kind.item, extra)}
            if kind.min_length:
                node["minItems"] = kind.min_length
            if kind.max_length is not None:
                node["maxItems"] = kind.max_length
            return node
        if isinstance(kind, MapOf):
            node = {"type": "object", "additionalProperties": self.schema(kind.value, extra)}
            keys = _string(kind.key)
            if keys != {"type": "string"}:
                node["propertyNames"] = keys
            return node
        if isinstance(kind, Either):
            return self.either(kind, extra)
        if isinstance(kind, Object):
            return self.object(kind, extra)
        return {}  # AnyValue: every JSON value is one

    def either(self, kind: Either, extra: Mapping[str, Any] | None) -> Schema:
        options = []
        taken: set[str] = set()
        for option in kind.options:
            types = _json_types(option)
            node = self.schema(option, extra, alternative=False)
            if _overlap(types, taken):
                # The validator gives such a value to an earlier option, never to this one.
                node = {"allOf": [node], "not": {"type": sorted(taken)}}
            options.append(node)
            if types is None:
                break  # no later option gets a value
            taken |= types
        return options[0] if len(options) == 1 else {"anyOf": options}

    def object(self, kind: Object, extra: Mapping[str, Any] | None) -> Schema:
        node: Schema = {"type": "object", "properties": {
            name: self.field(spec, extra) for name, spec in kind.fields.items()}}
        required = [name for name, spec in kind.fields.items() if spec.required]
        if required:
            node["required"] = required
        node["additionalProperties"] = False
        if kind.doc:
            node["description"] = kind.doc
        return node

    def field(self, spec: Field, extra: Mapping[str, Any] | None) -> Schema:
        node = self.schema(spec.kind, extra)
        # A field holding an object is described by the object's own doc where it has one.
        own = spec.kind.doc if isinstance(spec.kind, Object) else ""
        words = [own or spec.doc]
        if spec.details:
            words.append(spec.details)
        if spec.default_text:
            words.append(f"Default: {spec.default_text}.")
        node["description"] = " ".join(words)
        if spec.default is not REQUIRED and spec.default is not OMIT:
            node["default"] = copy.deepcopy(spec.default)
        if spec.example is not OMIT:
            node["examples"] = [copy.deepcopy(spec.example)]
        return node


def _bounded(node: Schema, minimum: float | None, maximum: float | None) -> Schema:
    if minimum is not None:
        node["minimum"] = minimum
    if maximum is not None:
        node["maximum"] = maximum
    return node


def _string(kind: String) -> Schema:
    node: Schema = {"type": "string"}
    if kind.min_length:
        node["minLength"] = kind.min_length
    if kind.pattern is not None:
        node["pattern"] = f"^(?:{kind.pattern.pattern})$"
    for key, value in kind.rule_schema.items():
        if key in node:  # a second pattern (or length) must hold as well as the first
            node.setdefault("allOf", []).append({key: copy.deepcopy(value)})
        else:
            node[key] = copy.deepcopy(value)
    return node
