"""Retry delays: doubling from the first, capped, jittered between half and all of each step,
and back to the first after a success."""

from __future__ import annotations

import random

from floe.pilot.backoff import Backoff, jittered


def test_delays_double_up_to_the_cap_each_jittered_within_its_step():
    backoff = Backoff(first=0.5, cap=4.0, rng=random.Random(1))
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for step in steps:
        assert step / 2 <= backoff.next() <= step


def test_a_reset_starts_over():
    backoff = Backoff(first=1.0, cap=60.0, rng=random.Random(2))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0


def test_pilots_told_the_same_wait_come_back_spread_out():
    rng = random.Random(3)
    waits = [jittered(30, rng) for _ in range(100)]
    assert all(24 <= wait <= 36 for wait in waits)
    assert len({round(wait, 3) for wait in waits}) > 90
