"""Charts as inline SVG, drawn on the server: a stacked bar of task states, attempts ended per
hour, attempts completed and failed over a dataset's life, histograms with a marker for what was
requested, and a share against its usage. Colours come from the stylesheet (classes
`s-<state>`), so the pages need no script and no image from anywhere."""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence

from floe.config.states import TaskState

from .html import Markup, duration, join, number, size, tag

STATES = tuple(s.value for s in TaskState)
# Steps between the labels of a time axis (seconds), from a short run's to a long campaign's.
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400, 91 * 86400)
SIZE_STEPS = tuple(2 ** k for k in range(10, 51))


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
    for tick in _levels(scale_top):
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


def over_time(ended: Mapping[str, Sequence[float]], start: float, end: float, total: int,
              now: float | None = None, finish: tuple[float, float] | None = None) -> Markup:
    """Attempts completed (an area) and failed (a line), counted up from `start` to `end`, from
    their end times (`ended` by state, each sorted), against a dashed line at the `total` tasks
    of the dataset. Where the dataset still runs, a mark at `now`, and where there is an
    estimate, a dotted line from now to `finish` (time, completed attempts then), cut at `end`.
    The time axis labels seconds for a run of minutes and days for one of weeks."""
    width, height, left, bottom, top, right = 600, 220, 48, 30, 14, 14
    plot_w, plot_h = width - left - right, height - top - bottom
    end = max(end, start + 10)
    span = end - start
    completed, failed = ended.get("complete", ()), ended.get("failed", ())
    scale_top = _nice(max(total, len(completed), len(failed), 1))

    def x(t: float) -> float:
        return left + plot_w * (min(max(t, start), end) - start) / span

    def y(count: float) -> float:
        return top + plot_h - plot_h * count / scale_top

    parts: list[Markup] = []
    for tick in _levels(scale_top):
        parts.append(tag("line", x1=left, x2=width - right, y1=f"{y(tick):.1f}",
                         y2=f"{y(tick):.1f}", class_="grid"))
        parts.append(tag("text", number(tick), x=left - 6, y=f"{y(tick) + 4:.1f}",
                         class_="axis", text_anchor="end"))
    parts += _time_axis(start, end, x, height - 8)
    if total:
        parts.append(tag("line", x1=left, x2=width - right, y1=f"{y(total):.1f}",
                         y2=f"{y(total):.1f}", class_="target"))
        parts.append(tag("text", f"all {total:,} tasks", x=left + 4, y=f"{y(total) - 4:.1f}",
                         class_="axis"))
    samples = [start + span * i / 240 for i in range(241)]
    for state, times in (("complete", completed), ("failed", failed)):
        if not times:
            continue
        steps = [f"M{x(start):.1f},{y(0):.1f}"]
        for t in samples:
            steps.append(f"H{x(t):.1f}V{y(bisect_right(times, t)):.1f}")
        line = "".join(steps)
        if state == "complete":
            parts.append(tag("path", d=line + f"V{y(0):.1f}Z", class_="area s-complete"))
        parts.append(tag("path", tag("title", f"{len(times):,} attempts {state}"), d=line,
                         class_=f"line s-{state}"))
    if now is not None and start <= now <= end:
        parts.append(tag("line", x1=f"{x(now):.1f}", x2=f"{x(now):.1f}", y1=top,
                         y2=top + plot_h, class_="now"))
        parts.append(tag("text", "now", x=f"{x(now) - 4:.1f}", y=top + 12, class_="axis",
                         text_anchor="end"))
        if finish is not None and finish[0] > now:
            at, count = finish
            if at > end:  # the estimate runs past the chart: cut it where the chart ends
                count = len(completed) + (count - len(completed)) * (end - now) / (at - now)
                at = end
            parts.append(tag("line", tag("title", "at the recent rate"), x1=f"{x(now):.1f}",
                             y1=f"{y(len(completed)):.1f}", x2=f"{x(at):.1f}",
                             y2=f"{y(count):.1f}", class_="projection"))
    label = (f"attempts completed and failed from {_clock(start, span)} to "
             f"{_clock(end, span)} UTC: {len(completed):,} completed, {len(failed):,} failed, "
             f"of {total:,} tasks")
    return join([tag("svg", tag("title", label), parts, viewBox=f"0 0 {width} {height}",
                     class_="chart", role="img", aria_label=label),
                 tag("ul", tag("li", tag("span", class_="swatch s-complete"),
                               "attempts completed"),
                     tag("li", tag("span", class_="swatch s-failed"), "attempts failed"),
                     tag("li", tag("span", class_="swatch target"), "all tasks"),
                     tag("li", tag("span", class_="swatch projection"), "at the recent rate")
                     if finish is not None else None,
                     class_="legend")])


def histogram(values: Mapping[str, Sequence[float]], requested: float | None, unit: str,
              what: str, bins: int = 24) -> Markup:
    """How many attempts (completed, and failed stacked above) fell in each of `bins` equal
    ranges of `values` (`unit` "bytes" or "seconds"), from zero, with a dashed marker at the
    `requested` value; where that is more than three times the largest value, the axis ends
    near the values and an arrow at its end says where the request is."""
    width, height, left, bottom, top, right = 600, 180, 44, 30, 24, 14
    plot_w, plot_h = width - left - right, height - top - bottom
    fmt: Callable[[float], str] = size if unit == "bytes" else duration
    largest = max((v for vs in values.values() for v in vs), default=0.0)
    shown_request = requested is not None and (requested <= 3 * largest or not largest)
    axis_top = max(largest, requested if shown_request else 0.0, 1.0) * 1.04
    step = _step(axis_top / 5, SIZE_STEPS if unit == "bytes" else TIME_STEPS)
    axis_top = step * -(-axis_top // step)
    width_of_bin = axis_top / bins
    counts = {state: [0] * bins for state in ("complete", "failed")}
    for state, found in values.items():
        for value in found:
            counts[state][min(int(value / width_of_bin), bins - 1)] += 1
    tallest = max((counts["complete"][i] + counts["failed"][i] for i in range(bins)), default=0)
    scale_top = _nice(max(tallest, 1))

    def x(value: float) -> float:
        return left + plot_w * value / axis_top

    parts: list[Markup] = []
    for tick in _levels(scale_top):
        y = top + plot_h - plot_h * tick / scale_top
        parts.append(tag("line", x1=left, x2=width - right, y1=f"{y:.1f}", y2=f"{y:.1f}",
                         class_="grid"))
        parts.append(tag("text", number(tick), x=left - 6, y=f"{y + 4:.1f}", class_="axis",
                         text_anchor="end"))
    tick = 0.0
    while tick <= axis_top + step / 2:
        anchor = "start" if not tick else "end" if tick + step > axis_top + step / 2 \
            else "middle"  # the first and last labels stay inside the chart
        parts.append(tag("text", fmt(tick), x=f"{x(tick):.1f}", y=height - 8, class_="axis",
                         text_anchor=anchor))
        tick += step
    for i in range(bins):
        base = top + plot_h
        for state in ("complete", "failed"):
            count = counts[state][i]
            if not count:
                continue
            bar = plot_h * count / scale_top
            base -= bar
            low, high = fmt(i * width_of_bin), fmt((i + 1) * width_of_bin)
            parts.append(tag("rect", tag("title", f"{low} to {high}: {count:,} {state}"),
                             x=f"{x(i * width_of_bin) + 1:.1f}", y=f"{base:.1f}",
                             width=f"{max(plot_w / bins - 2, 1):.1f}", height=f"{bar:.1f}",
                             class_=f"s-{state}"))
    if requested is not None and shown_request:
        at = x(requested)
        parts.append(tag("line", x1=f"{at:.1f}", x2=f"{at:.1f}", y1=top - 4, y2=top + plot_h,
                         class_="requested"))
        parts.append(tag("text", f"requested {fmt(requested)}", x=f"{at:.1f}", y=top - 8,
                         class_="axis marker",
                         text_anchor="end" if at > left + plot_w / 2 else "start"))
    elif requested is not None:
        parts.append(tag("text", f"requested {fmt(requested)} →", x=width - right, y=top - 8,
                         class_="axis marker", text_anchor="end"))
    count = sum(len(v) for v in values.values())
    label = f"{what} of {count:,} attempts, up to {fmt(largest)}" + (
        f"; requested {fmt(requested)}" if requested is not None else "")
    return tag("svg", tag("title", label), parts, viewBox=f"0 0 {width} {height}",
               class_="chart histogram", role="img", aria_label=label)


def fraction(value: float) -> Markup:
    """A short bar filled to `value` (0 to 1), for a rate beside its number."""
    return tag("svg", tag("rect", x=0, y=0, width=100, height=8, class_="track"),
               tag("rect", x=0, y=0, width=f"{100 * min(max(value, 0.0), 1.0):.1f}", height=8,
                   class_="s-failed"),
               viewBox="0 0 100 8", class_="fraction", aria_hidden="true")


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


def _time_axis(start: float, end: float, x: Callable[[float], float], baseline: float
               ) -> list[Markup]:
    """Labels at round UTC times between `start` and `end`, at most six of them."""
    span = end - start
    step = _step(span / 6, TIME_STEPS)
    parts = []
    monday = 4 * 86400 if step % (7 * 86400) == 0 else 0  # weeks start on a Monday, not as 1970
    tick = -(-(start - monday) // step) * step + monday
    while tick <= end:
        if x(tick) < x(end) - 24:  # the last label would run past the edge
            parts.append(tag("text", _clock(tick, span, step), x=f"{x(tick):.1f}",
                             y=baseline, class_="axis", text_anchor="middle"))
        tick += step
    return parts


def _clock(moment: float, span: float, step: float = 0) -> str:
    """A UTC time as precise as a `span` of time calls for: a date where days go by."""
    if step >= 86400 or (span > 86400 and moment % 86400 == 0):
        return time.strftime("%d %b", time.gmtime(moment))
    return time.strftime("%H:%M:%S" if span < 600 else "%H:%M", time.gmtime(moment))


def _step(least: float, steps: Sequence[float]) -> float:
    """The first of `steps` that is at least `least` (the last one if none is)."""
    return next((s for s in steps if s >= least), steps[-1])


def _levels(scale_top: float) -> tuple[float, ...]:
    """Where a count axis gets a grid line: its ends, and its middle where that is whole."""
    return (0, scale_top / 2, scale_top) if scale_top % 2 == 0 else (0, scale_top)


def _nice(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value`."""
    magnitude = 1.0
    while magnitude * 10 <= value:
        magnitude *= 10
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= value:
            return factor * magnitude
    raise AssertionError("unreachable")
