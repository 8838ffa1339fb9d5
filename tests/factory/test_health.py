"""A site's health: exponential backoff on failures in a row, reported once when failing, cleared
by a pilot that registers."""

from __future__ import annotations

from factory.health import Health


def test_each_failure_in_a_row_doubles_the_wait_up_to_the_maximum():
    health = Health(backoff=30, max_backoff=200, failing_after=10)
    waits = []
    for _ in range(5):
        health.failure(1000.0, "sbatch failed")
        waits.append(health.until - 1000.0)
    assert waits == [30, 60, 120, 200, 200]
    assert health.backing_off(1199.0) and not health.backing_off(1200.0)


def test_a_site_is_reported_failing_once_after_enough_failures():
    health = Health(backoff=1, failing_after=3)
    reports = [health.failure(float(t), "held") for t in range(5)]
    assert reports == [False, False, True, False, False]
    assert health.failing
    assert health.to_dict(4.0)["last_error"] == "held"


def test_a_pilot_that_lives_clears_the_failures():
    health = Health(backoff=10, failing_after=2)
    health.failure(0.0, "died at start")
    health.failure(0.0, "died at start")
    assert health.success() is True
    assert not health.failing and not health.backing_off(0.0)
    assert health.success() is False
