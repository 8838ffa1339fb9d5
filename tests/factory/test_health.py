"""A site's health: exponential backoff on failures in a row, reported once when failing, cleared
by a pilot that registers."""

from __future__ import annotations

from floe.factory.health import Health


def test_each_failure_in_a_row_doubles_the_wait_up_to_the_maximum():
    health = Health(backoff=30, max_backoff=200, failing_after=10)
    waits, now = [], 1000.0
    for _ in range(5):
        health.failure(now, "sbatch failed")
        waits.append(health.until - now)
        now = health.until  # the next try, once the wait is over
    assert waits == [30, 60, 120, 200, 200]
    assert health.backing_off(now - 1) and not health.backing_off(now)


def test_a_failure_seen_while_waiting_counts_but_lengthens_nothing():
    health = Health(backoff=30, max_backoff=1800, failing_after=5)
    assert health.failure(0.0, "cannot reach the login node") is False
    reports = [health.failure(float(t), f"still unreachable ({t})") for t in range(1, 30)]
    assert reports.count(True) == 1 and health.failing  # reported once, on the fifth
    assert (health.failures, health.until) == (30, 30.0)  # the first wait, not lengthened
    assert health.last_error == "still unreachable (29)"
    health.failure(30.0, "cannot reach the login node")  # the next try, after the wait
    assert health.until == 90.0


def test_a_site_is_reported_failing_once_after_enough_failures():
    health = Health(backoff=1, failing_after=3)
    reports = [health.failure(float(t), "held") for t in range(5)]
    assert reports == [False, False, True, False, False]
    assert health.failing
    assert health.to_dict(4.0)["last_error"] == "held"


def test_a_pilot_that_lives_or_a_changed_config_clears_the_failures():
    health = Health(backoff=10, failing_after=2)
    health.failure(0.0, "died at start")
    health.failure(10.0, "died at start")
    assert health.success() is True
    assert not health.failing and not health.backing_off(10.0)
    assert health.success() is False
    health.failure(20.0, "died at start")
    assert health.clear() is True and not health.backing_off(20.0)
    assert health.clear() is False
