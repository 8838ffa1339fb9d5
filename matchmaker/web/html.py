"""HTML built in Python, escaped by default: `tag` makes an element, every plain string that goes
into it is escaped, and only `Markup` (what `tag` returns) passes through as it is. Also the
small formatters that every page shares (times, sizes, counts)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable

from floe.config.resources import format_duration, format_size

from ..frontdoor import PREFIX

URL_ATTRIBUTES = frozenset({"href", "action", "src"})


class Markup(str):
    """Text that is already HTML, safe to include as it is."""

    __slots__ = ()


Child = Markup | str | int | float | None | Iterable["Child"]
VOID = frozenset({"br", "input", "link", "meta", "hr"})


def escape(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(children: Iterable[Child]) -> Markup:
    """The children rendered one after another; None and False are left out."""
    parts: list[str] = []
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, (str, int, float)):
            parts.append(escape(child))
        else:
            parts.append(join(child))
    return Markup("".join(parts))


def tag(name: str, /, *children: Child, **attrs: object) -> Markup:
    """`<name attrs>children</name>`. Attribute names: a trailing `_` is dropped (`class_`) and
    other `_` become `-` (`aria_label`); True gives a bare attribute, None or False none."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        # Root-absolute links go under the path the pages are published at (frontdoor).
        if key in URL_ATTRIBUTES and isinstance(value, str) and value.startswith("/") \
                and not value.startswith("//"):
            value = PREFIX.get() + value
        rendered.append(f" {key}" if value is True else f' {key}="{escape(value)}"')
    opening = f"<{name}{''.join(rendered)}>"
    if name in VOID:
        return Markup(opening)
    return Markup(f"{opening}{join(children)}</{name}>")


def link(href: str, /, *text: Child, **attrs: object) -> Markup:
    return tag("a", *text, href=href, **attrs)


def table(headers: Iterable[Child], rows: Iterable[Iterable[Child]], empty: str = "none",
          numeric: Iterable[int] = (), **attrs: object) -> Markup:
    """A table in a horizontally scrolling box (wide tables stay usable on a phone); columns
    whose indices are in `numeric` align right. Each cell carries its column's name, which the
    stylesheet shows beside the value where a table becomes cards on a narrow screen."""
    right = set(numeric)
    headers = list(headers)
    labels = [h if isinstance(h, str) and not isinstance(h, Markup) else None for h in headers]
    body = [tag("tr", *(tag("td", cell, class_="num" if i in right else None,
                            data_label=labels[i] if i < len(labels) else None)
                        for i, cell in enumerate(row))) for row in rows]
    if not body:
        return tag("p", empty, class_="empty")
    head = tag("tr", *(tag("th", h, class_="num" if i in right else None)
                       for i, h in enumerate(headers)))
    return tag("div", tag("table", tag("thead", head), tag("tbody", body), **attrs),
               class_="scroll")


def when(timestamp: float | None) -> Markup:
    """A Unix time as UTC date and time, with the full value as a tooltip."""
    if timestamp is None:
        return Markup("–")
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
    return tag("time", text[:16], datetime=text.replace(" ", "T") + "Z", title=text + " UTC")


def ago(seconds: float) -> str:
    return format_duration(max(seconds, 0)) if seconds >= 1 else "just now"


def size(nbytes: float | None) -> str:
    return "–" if nbytes is None else format_size(nbytes)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 10 and not float(seconds).is_integer():  # short tasks: not all "0s"
        return f"{seconds:.2g}s"
    return format_duration(seconds)


def number(value: float | None, digits: int = 3) -> str:
    """A count as it is, other numbers rounded for reading (small ones to `digits` significant
    digits)."""
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.{digits}g}"


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "–"
