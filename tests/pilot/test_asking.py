"""The pilot's asking policy, driven with numbers: how many short tasks it queues, when it asks
in series or side by side, and when it stops asking for good."""

from __future__ import annotations

import dataclasses

import pytest

from floe.pilot import asking
from floe.pilot.asking import SERIES, SIDE, Decision, Limits, Situation
from floe.pilot.client import Unreachable

LIMITS = Limits(min_seconds=10, idle_timeout=300)
BUSY = Situation(now=1000.0, seconds_left=3600, idle=False, asked_since_busy=False,
                 last_busy=990.0, next_ask=0.0, series_size=1, queued=0, queued_seconds=0.0,
                 horizon=1.0, time_after_queue=3600, can_offer_series=True,
                 can_offer_side=True, free_cpus=4)


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
    # ... and at half the horizon by what the matchmaker expects the queued ones to run: one
    # task whose runtime it has not learned yet (expected to run its walltime) is enough.
    assert asking.decide(dataclasses.replace(short, queued=1, queued_seconds=3600.0),
                         LIMITS) == Decision()
    assert asking.decide(dataclasses.replace(short, queued=2, queued_seconds=0.6), LIMITS) == \
        Decision()
    assert asking.decide(dataclasses.replace(short, queued=2, queued_seconds=0.5), LIMITS) == \
        Decision(SERIES, 18)
    # Nothing to offer beside the long-running tasks, or no time after the queue: no ask.
    assert asking.decide(dataclasses.replace(short, can_offer_series=False), LIMITS) == \
        Decision()
    assert asking.decide(dataclasses.replace(short, time_after_queue=0), LIMITS) == Decision()
    # Told that nothing more fits, it waits for a task to end (its report carries the ask).
    assert asking.decide(dataclasses.replace(short, dry=True), LIMITS) == Decision()


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
    assert limit.asking(25) == 25  # nothing learned yet: what the matchmaker allows
    assert limit.cut(25, 1.5, Unreachable("refused")) is None  # at once: an outage, backed off
    assert limit.cut(25, 24.5, Unreachable("no answer in time")) is None  # not cut short
    assert limit.cut(0, 20.0, Unreachable("reset")) is None  # not held
    assert limit.cut(25, 12.0, Unreachable("answered 503", 503)) is None  # answered: an outage
    # Once: perhaps a matchmaker killed while it held the ask; asked again at once.
    assert limit.cut(25, 12.3, Unreachable("reset")) == \
        "a held ask failed after 12s (reset); asking again at once"
    assert limit.answered(25, 0.5) is None  # it was: the next ask was answered
    assert limit.cut(25, 20.2, Unreachable("closed")) == \
        "a held ask failed after 20s (closed); asking again at once"
    assert limit.asking(25) == 25
    assert limit.cut(25, 20.6, Unreachable("answered 504", 504)) == (
        "a held ask failed after 21s (answered 504), as the one before it: something between "
        "the pilot and the matchmaker (a proxy, a load balancer) closes requests idle that long; "
        "asking again at once, and for holds of at most 16s from now on (raise its idle timeout "
        "above the matchmaker's hold_asks to spare the asks)")
    assert (limit.asking(25), limit.asking(10)) == (16, 10)


def test_cuts_that_are_not_alike_are_backed_off_from_after_a_few():
    limit = asking.HoldLimit()
    assert limit.cut(25, 10.0, Unreachable("reset")) is not None
    assert limit.cut(25, 5.0, Unreachable("reset")) is not None
    assert limit.cut(25, 20.0, Unreachable("reset")) is None  # a link failing at random
    assert limit.limit is None and limit.cut(25, 3.0, Unreachable("reset")) is not None


def test_a_learned_limit_is_probed_now_and_then_and_lifted_once_nothing_cuts():
    limit = asking.HoldLimit()
    for _ in range(2):
        limit.cut(25, 3.1, Unreachable("closed"))
    assert limit.limit == 2
    asked = [limit.asking(25) for _ in range(2 * asking.PROBE_EVERY)]
    assert asked.count(25) == 2 and set(asked) == {2, 25}  # a whole hold now and then
    assert limit.cut(25, 3.3, Unreachable("closed")) == ""  # still cut: nothing to say
    assert limit.answered(2, 2.0) is None and limit.limit == 2
    assert limit.answered(25, 3.5) is None  # answered early (work came): no sign
    assert limit.answered(25, 24.0) == ("a held ask was answered after 24s: nothing cuts held "
                                        "asks after 3s any more; asking for whole holds again")
    assert limit.limit is None and limit.asking(25) == 25


def test_a_cut_that_moved_is_learned_from_two_whole_holds_asked_for_to_see():
    limit = asking.HoldLimit()
    for _ in range(2):
        limit.cut(25, 3.1, Unreachable("closed"))
    assert limit.limit == 2
    said = []
    for _ in range(3 * asking.PROBE_EVERY):
        hold = limit.asking(25)
        if hold == 25:  # the proxy now closes requests after 20 s
            said.append(limit.cut(25, 20.0, Unreachable("closed")))
        else:
            limit.answered(hold, float(hold))
    assert said[0] == ""  # once: nothing said, the limit stands
    assert said[1].startswith("held asks are now cut after 20s (closed), twice: something "
                              "between the pilot and the matchmaker")
    assert limit.limit == 16 and len(said) == 3 and said[2] == ""  # still cut there: quietly
