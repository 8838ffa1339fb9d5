"""The top-up policy with numbers alone: backlog, no demand, demand vanishing, limits, pilots that
find no work, a failing site, several shapes."""

from __future__ import annotations

import pytest

from floe.factory.policy import Limits, ShapeCounts, top_up

LIMITS = Limits(max_queued=20, max_total=100, max_per_cycle=10, removal_grace=300)


@pytest.mark.parametrize(("case", "shape", "limits", "submit"), [
    ("backlog ramps at the per-cycle limit", ShapeCounts("s", needed=500), LIMITS, 10),
    ("a small backlog is met at once", ShapeCounts("s", needed=3), LIMITS, 3),
    ("queued pilots already cover the demand", ShapeCounts("s", needed=5, queued=5), LIMITS, 0),
    ("queued pilots cover part of it", ShapeCounts("s", needed=8, queued=5), LIMITS, 3),
    ("no demand, nothing submitted", ShapeCounts("s", needed=0), LIMITS, 0),
    ("free room of running pilots takes the work", ShapeCounts("s", needed=6, room=6,
                                                               running=2), LIMITS, 0),
    ("free room takes part of it", ShapeCounts("s", needed=6, room=2, running=1), LIMITS, 4),
    ("max_queued caps the queue", ShapeCounts("s", needed=500, queued=15), LIMITS, 5),
    ("max_total caps queued plus running", ShapeCounts("s", needed=500, running=95), LIMITS, 5),
    ("at max_total nothing more", ShapeCounts("s", needed=500, running=100), LIMITS, 0),
    ("held pilots serve no demand", ShapeCounts("s", needed=3, held=3), LIMITS, 3),
    ("held pilots take no place in the limits", ShapeCounts("s", needed=50, queued=18, held=5),
     LIMITS, 2),
])
def test_submissions(case, shape, limits, submit):
    decision = top_up([shape], limits, now=1000.0)
    assert decision.submit == {"s": submit}, case
    assert decision.remove == {"s": 0}, case
    assert decision.remove_held == {"s": shape.held}, case


def test_held_pilots_are_removed_even_while_the_site_backs_off():
    decision = top_up([ShapeCounts("s", needed=4, held=2)], LIMITS, now=0.0, backing_off=30.0)
    assert decision.remove_held == {"s": 2} and decision.submit == {"s": 0}
    assert decision.changes
    assert "2 held pilots removed" in decision.reasons


def test_a_site_backing_off_submits_nothing_however_large_the_backlog():
    decision = top_up([ShapeCounts("s", needed=500)], LIMITS, now=0.0, backing_off=30.0)
    assert decision.submit == {"s": 0}
    assert any("backing off" in reason for reason in decision.reasons)


def test_queued_pilots_whose_demand_vanished_are_removed_after_the_grace_period():
    shape = ShapeCounts("s", needed=0, queued=7, running=3)
    first = top_up([shape], LIMITS, now=1000.0)
    assert first.remove == {"s": 0} and first.surplus_since == {"s": 1000.0}
    during = top_up([shape], LIMITS, now=1299.0, surplus_since=first.surplus_since)
    assert during.remove == {"s": 0} and during.surplus_since == {"s": 1000.0}
    after = top_up([shape], LIMITS, now=1300.0, surplus_since=during.surplus_since)
    assert after.remove == {"s": 7}
    assert after.submit == {"s": 0}


def test_only_the_surplus_beyond_the_remaining_demand_is_removed():
    shape = ShapeCounts("s", needed=2, queued=7)
    since = top_up([shape], LIMITS, now=0.0).surplus_since
    assert top_up([shape], LIMITS, now=600.0, surplus_since=since).remove == {"s": 5}


def test_demand_that_returns_within_the_grace_period_resets_the_clock():
    first = top_up([ShapeCounts("s", needed=0, queued=4)], LIMITS, now=0.0)
    back = top_up([ShapeCounts("s", needed=4, queued=4)], LIMITS, now=200.0,
                  surplus_since=first.surplus_since)
    assert back.surplus_since == {}
    gone_again = top_up([ShapeCounts("s", needed=0, queued=4)], LIMITS, now=400.0,
                        surplus_since=back.surplus_since)
    assert gone_again.remove == {"s": 0} and gone_again.surplus_since == {"s": 400.0}


def test_a_failing_site_still_removes_surplus_pilots():
    shape = ShapeCounts("s", needed=0, queued=3)
    decision = top_up([shape], LIMITS, now=500.0, surplus_since={"s": 0.0}, backing_off=30.0)
    assert decision.remove == {"s": 3}


def test_a_short_budget_is_shared_so_that_no_shape_waits_for_anothers_backlog():
    shapes = [ShapeCounts("small", needed=30), ShapeCounts("gpu", needed=2),
              ShapeCounts("big", needed=8)]
    decision = top_up(shapes, Limits(max_per_cycle=12, max_queued=50), now=0.0)
    assert decision.submit == {"small": 5, "gpu": 2, "big": 5}
    assert sum(decision.submit.values()) == 12


def test_every_shape_with_demand_gets_pilots_when_the_budget_allows():
    shapes = [ShapeCounts("small", needed=3), ShapeCounts("gpu", needed=1)]
    assert top_up(shapes, LIMITS, now=0.0).submit == {"small": 3, "gpu": 1}


def test_removed_pilots_make_room_under_max_queued_for_another_shape():
    shapes = [ShapeCounts("old", needed=0, queued=20), ShapeCounts("new", needed=5)]
    decision = top_up(shapes, LIMITS, now=1000.0, surplus_since={"old": 0.0})
    assert decision.remove == {"old": 20, "new": 0}
    assert decision.submit == {"old": 0, "new": 5}


def test_the_limits_reached_are_named_in_the_reasons():
    decision = top_up([ShapeCounts("s", needed=50, queued=20)], LIMITS, now=0.0)
    assert decision.submit == {"s": 0}
    assert any("queued 20/20" in reason for reason in decision.reasons)


def test_a_steady_backlog_reaches_its_target_in_a_few_cycles_and_stops_there():
    queued, cycles = 0, 0
    while cycles < 20:
        decision = top_up([ShapeCounts("s", needed=45, queued=queued)],
                          Limits(max_queued=100, max_total=100, max_per_cycle=10), now=0.0)
        if not decision.changes:
            break
        queued += decision.submit["s"]
        cycles += 1
    assert queued == 45
    assert cycles == 5
