"""The pilot's asking policy, driven with numbers: how many short tasks it queues, when it asks
in series or side by side, and when it stops asking for good."""

from __future__ import annotations

import dataclasses

import pytest

from floe.pilot import asking
from floe.pilot.asking import SERIES, SIDE, Decision, Limits, Situation

LIMITS = Limits(min_seconds=10, idle_timeout=300)
BUSY = Situation(now=1000.0, seconds_left=3600, idle=False, asked_since_busy=False,
                 last_busy=990.0, next_ask=0.0, series_size=1, queued=0, time_after_queue=3600,
                 can_offer_series=True, can_offer_side=True, free_cpus=4)


def test_the_queue_is_sized_from_the_recent_tasks_wall_times():
    assert asking.series_size([], 1.0) == 1  # nothing known yet
    for seconds, size in ((0.3, 3), (0.001, 64), (0.05, 20), (0.6, 1), (30.0, 1)):
        assert asking.series_size([seconds] * 5, 1.0) == size, seconds
    assert asking.series_size([0.001] * 5, 0.0) == 1  # told not to prefetch


def test_long_tasks_are_asked_for_side_by_side_as_many_as_the_free_cpus_hold():
    assert asking.decide(BUSY, LIMITS) == Decision(SIDE, 4)
    assert asking.decide(dataclasses.replace(BUSY, free_cpus=200), LIMITS) == \
        Decision(SIDE, asking.MAX_ASK)
    assert asking.decide(dataclasses.replace(BUSY, can_offer_side=False), LIMITS) == Decision()


def test_short_tasks_are_queued_in_series_and_asked_for_again_at_half_the_queue():
    short = dataclasses.replace(BUSY, series_size=20)
    assert asking.decide(short, LIMITS) == Decision(SERIES, 20)
    assert asking.decide(dataclasses.replace(short, queued=11), LIMITS) == Decision()
    assert asking.decide(dataclasses.replace(short, queued=10), LIMITS) == Decision(SERIES, 10)
    # Nothing to offer beside the long-running tasks, or no time after the queue: no ask.
    assert asking.decide(dataclasses.replace(short, can_offer_series=False), LIMITS) == \
        Decision()
    assert asking.decide(dataclasses.replace(short, time_after_queue=0), LIMITS) == Decision()


def test_no_ask_before_its_time():
    assert asking.decide(dataclasses.replace(BUSY, next_ask=1001.0), LIMITS) == Decision()


@pytest.mark.parametrize("change, stop", [
    ({"seconds_left": 9}, "lifetime"),
    ({"idle": True, "asked_since_busy": True, "last_busy": 700.0}, "idle"),
    ({"idle": True, "can_offer_side": False}, "empty slot"),
])
def test_the_pilot_stops_asking_when_there_is_no_point(change, stop):
    assert asking.decide(dataclasses.replace(BUSY, **change), LIMITS) == Decision(stop=stop)


def test_an_idle_pilot_that_has_not_asked_since_it_was_busy_asks_before_it_leaves():
    idle = dataclasses.replace(BUSY, idle=True, asked_since_busy=False, last_busy=0.0)
    assert asking.decide(idle, LIMITS) == Decision(SIDE, 4)


def test_held_asks_cut_short_twice_alike_lower_the_holds_asked_for_and_nothing_else_does():
    limit = asking.HoldLimit()
    assert limit.of(25) == 25  # nothing learned yet: what the matchmaker allows
    assert limit.cut(25, 1.5, "refused") is None  # failed at once: an outage, backed off
    assert limit.cut(25, 24.5, "timed out") is None  # at its end: not cut short
    assert limit.cut(0, 20.0, "reset") is None  # not held
    # Once: perhaps a matchmaker killed while it held the ask; asked again at once.
    assert limit.cut(25, 12.3, "reset") == "a held ask failed after 12s (reset); asking again " \
                                           "at once"
    limit.answered()  # it was: the next ask was answered
    assert limit.cut(25, 20.2, "the connection was closed") == (
        "a held ask failed after 20s (the connection was closed); asking again at once")
    assert limit.of(25) == 25
    assert limit.cut(25, 20.6, "closed") == (
        "a held ask failed after 21s (closed), as the one before it: something between the "
        "pilot and the matchmaker (a proxy, a NAT) seems to end requests idle that long; asking "
        "again at once, and for holds of at most 16s from now on")
    assert (limit.of(25), limit.of(10)) == (16, 10)
    assert limit.cut(16, 3.0, "reset").endswith("asking again at once")  # not alike: once more
    assert limit.cut(16, 3.2, "reset").endswith("at most 2s from now on")
    assert limit.of(25) == 2
    assert limit.cut(2, 2.0, "reset") is None  # within a second of its end
