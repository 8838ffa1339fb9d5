"""What the matchmaker accepts as an id or a whole number, and how deeply a JSON body may nest:
the bounds that storage and the code behind every door can hold, applied where a request comes
in (API parameters and bodies, the pages' routes), so that nothing past them answers 500.

SQLite stores integers in 64 bits: a larger one is refused with a sentence, not an
OverflowError. Ids are written in ASCII digits only (`str.isdigit` takes '²', which `int` does
not, and `int` takes Arabic-Indic digits). A body nested deeper than `MAX_DEPTH` is refused
before it is parsed: parsing it, checking it or walking it would exhaust the recursion limit.
"""

from __future__ import annotations

import re

MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
MAX_DEPTH = 64
"""The deepest nesting of lists and objects a request body may have."""

_WHOLE = re.compile(r"-?[0-9]{1,19}")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def whole(text: str) -> int | None:
    """`text` as a whole number SQLite can store (ASCII digits, an optional minus), or None."""
    if not _WHOLE.fullmatch(text):
        return None
    value = int(text)
    return value if MIN_INT <= value <= MAX_INT else None


def record_id(text: str) -> int | None:
    """`text` as an id (a whole number from 0 up that SQLite can store), or None."""
    value = whole(text)
    return value if value is not None and value >= 0 else None


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text `raw` nests lists and objects more than `limit` deep. Decided
    without parsing and in C's time: the strings are taken out, then everything but brackets,
    then innermost empty pairs, one level per pass (a valid body's depth is a few passes)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        brackets, removed = _EMPTY_PAIR.subn(b"", brackets)
        if not brackets or not removed:  # all matched, or not JSON (the parser says why)
            return False
    return bool(brackets)
