"""Charts as inline SVG, drawn on the server: a stacked bar of task states, attempts ended per
hour, and a share against its usage. Colours come from the stylesheet (classes `s-<state>`), so
the pages need no script and no image from anywhere."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from config.states import TaskState

from .html import Markup, join, number, tag

STATES = tuple(s.value for s in TaskState)


def progress(counts: Mapping[str, int]) -> Markup:
    """One bar split by task state, in lifecycle order, each part titled with its count."""
    total = sum(counts.get(s, 0) for s in STATES)
    parts, x = [], 0.0
    for state in STATES:
        count = counts.get(state, 0)
        if not count:
            continue
        width = 1000 * count / total
        parts.append(tag("rect", tag("title", f"{state}: {count:,} ({100 * count / total:.0f}%)"),
                         x=f"{x:.2f}", y=0, width=f"{width:.2f}", height=10,
                         class_=f"s-{state}"))
        x += width
    label = ", ".join(f"{counts.get(s, 0):,} {s}" for s in STATES if counts.get(s))
    return tag("svg", tag("rect", x=0, y=0, width=1000, height=10, class_="track"), parts,
               viewBox="0 0 1000 10", preserveAspectRatio="none", class_="progress",
               role="img", aria_label=label or "no tasks")


def legend(states: Sequence[str] = STATES) -> Markup:
    return tag("ul", (tag("li", tag("span", class_=f"swatch s-{s}"), s) for s in states),
               class_="legend")


def per_hour(hours: Mapping[int, Mapping[str, int]], now: float, span: int = 24) -> Markup:
    """Bars of attempts completed (below) and failed (stacked above) in each of the last `span`
    hours, from `hours` as history.by_state returns them."""
    width, height, left, bottom, top = 600, 226, 44, 30, 12
    current = int(now // 3600)
    slots = list(range(current - span + 1, current + 1))
    tallest = max((sum(hours.get(h, {}).values()) for h in slots), default=0)
    scale_top = _nice(max(tallest, 1))
    plot_w, plot_h = width - left - 8, height - top - bottom
    step = plot_w / span
    parts: list[Markup] = []
    for tick in (0, scale_top / 2, scale_top):
        y = top + plot_h - plot_h * tick / scale_top
        parts.append(tag("line", x1=left, x2=width - 8, y1=f"{y:.1f}", y2=f"{y:.1f}",
                         class_="grid"))
        parts.append(tag("text", number(tick), x=left - 6, y=f"{y + 4:.1f}", class_="axis",
                         text_anchor="end"))
    for i, hour in enumerate(slots):
        x = left + i * step + step * 0.15
        base = top + plot_h
        counts = hours.get(hour, {})
        for state in ("complete", "failed"):
            count = counts.get(state, 0)
            if not count:
                continue
            bar = plot_h * count / scale_top
            base -= bar
            label = f"{time.strftime('%H:00', time.gmtime(hour * 3600))} UTC: {count} {state}"
            parts.append(tag("rect", tag("title", label), x=f"{x:.1f}", y=f"{base:.1f}",
                             width=f"{step * 0.7:.1f}", height=f"{bar:.1f}",
                             class_=f"s-{state}"))
        if hour == current:  # the last label ends at the edge, not past it
            parts.append(tag("text", time.strftime("%H:00", time.gmtime(hour * 3600)),
                             x=width - 8, y=height - 4, class_="axis", text_anchor="end"))
        elif i % 6 == 0 and i < span - 4:
            parts.append(tag("text", time.strftime("%H:00", time.gmtime(hour * 3600)),
                             x=f"{x + step * 0.35:.1f}", y=height - 4, class_="axis",
                             text_anchor="middle"))
    total = {s: sum(hours.get(h, {}).get(s, 0) for h in slots) for s in ("complete", "failed")}
    label = (f"attempts per hour over the last {span} hours: {total['complete']} completed, "
             f"{total['failed']} failed")
    return join([tag("svg", tag("title", label), parts, viewBox=f"0 0 {width} {height}",
                     class_="chart", role="img", aria_label=label),
                 legend(("complete", "failed"))])


def share_bars(share: float, usage: float) -> Markup:
    """Two thin bars: the fraction of the pool a user is entitled to, and what they used."""
    parts = []
    for row, (value, cls, what) in enumerate(((share, "share", "share"),
                                              (usage, "usage", "recent usage"))):
        parts.append(tag("rect", x=0, y=row * 9, width=1000, height=7, class_="track"))
        parts.append(tag("rect", tag("title", f"{what}: {100 * value:.1f}%"), x=0, y=row * 9,
                         width=f"{1000 * min(value, 1.0):.1f}", height=7, class_=cls))
    return tag("svg", parts, viewBox="0 0 1000 16", preserveAspectRatio="none",
               class_="pair", role="img",
               aria_label=f"share {100 * share:.0f}%, usage {100 * usage:.0f}%")


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value`."""
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= value:
            return factor * magnitude
    raise AssertionError("unreachable")
