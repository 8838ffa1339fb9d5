"""Checking request bodies against the JSON Schemas that the OpenAPI document publishes.

The API declares each body once, as a JSON Schema; the same schema validates requests here and
appears in /api/v1/openapi.json, so the document always says what the server really accepts.
Only the subset of JSON Schema the API uses is supported: type, properties, required,
additionalProperties, items, enum, minimum, maximum, minLength, maxLength, maxItems,
maxProperties and pattern.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}
_NAMES = {"object": "an object", "array": "a list", "string": "a string",
          "boolean": "true or false", "integer": "a whole number", "number": "a number",
          "null": "null"}


def problems(value: Any, schema: dict[str, Any], path: str = "body") -> list[str]:
    """Every way `value` breaks `schema`, as sentences naming the path; [] when it conforms."""
    found: list[str] = []
    _check(value, schema, path, found)
    return found


def _type_ok(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[kind])


def _check(value: Any, schema: dict[str, Any], path: str, found: list[str]) -> None:
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_type_ok(value, k) for k in kinds):
            expected = " or ".join(_NAMES[k] for k in kinds)
            found.append(f"{path}: expected {expected}, got {_show(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        options = ", ".join(repr(v) for v in schema["enum"])
        found.append(f"{path}: expected one of {options}, got {_show(value)}")
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{path}: must be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{path}: must be at most {schema['maximum']}, got {value}")
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append(f"{path}: must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{path}: must have at most {schema['maxLength']} characters, "
                         f"got {len(value)}")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            found.append(f"{path}: {_show(value)} does not match {schema['pattern']}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append(f"{path}: at most {schema['maxItems']} items, got {len(value)}")
            return
        if "items" in schema:
            for index, item in enumerate(value):
                _check(item, schema["items"], f"{path}[{index}]", found)
    elif isinstance(value, dict):
        _check_object(value, schema, path, found)


def _check_object(value: dict, schema: dict[str, Any], path: str, found: list[str]) -> None:
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        found.append(f"{path}: at most {schema['maxProperties']} entries, got {len(value)}")
        return
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            found.append(f"{path}.{name}: required")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            _check(item, properties[name], f"{path}.{name}", found)
        elif extra is False:
            close = difflib.get_close_matches(name, list(properties), n=1)
            hint = f'; did you mean "{close[0]}"?' if close else \
                f" (known: {', '.join(properties)})"
            found.append(f"{path}.{name}: unknown key{hint}")
        elif isinstance(extra, dict):
            _check(item, extra, f"{path}.{name}", found)


@lru_cache(maxsize=64)
def _pattern(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."
