"""Black-hole protection: consecutive failures of different tasks make a node suspect; one task
failing on its retries, overuse, and requeues do not."""

from __future__ import annotations

import random

from floe.config.states import ErrorClass
from floe.pilot.streak import FailureStreak

ERROR, STAGING = ErrorClass.TASK_ERROR, ErrorClass.STAGING_ERROR


def test_different_tasks_failing_in_a_row_make_the_node_suspect():
    streak = FailureStreak(3)
    streak.record(1, ERROR, "exit 1")
    streak.record(2, STAGING, "input missing")
    assert not streak.suspect
    streak.record(3, ERROR, "libfoo.so: cannot open shared object file")
    assert streak.suspect
    assert streak.describe().startswith("3 different tasks failed in a row on this node "
                                        "(tasks 1, 2, 3); the last: task 3, task_error: libfoo")


def test_one_task_failing_again_and_again_says_nothing_about_the_node():
    streak = FailureStreak(3)
    for _ in range(5):
        streak.record(7, ERROR)
    assert streak.length == 1 and not streak.suspect


def test_overuse_and_requeues_neither_count_nor_break_the_streak():
    streak = FailureStreak(3)
    streak.record(1, ERROR)
    for kind in (ErrorClass.RESOURCE_OVERUSE, ErrorClass.PILOT_LOST, ErrorClass.RESET):
        streak.record(2, kind)
    streak.record(3, ERROR)
    assert streak.length == 2


def test_a_success_ends_the_streak():
    streak = FailureStreak(2)
    streak.record(1, ERROR)
    streak.record(2, None)
    streak.record(3, ERROR)
    assert not streak.suspect


def test_a_limit_of_zero_never_suspects():
    streak = FailureStreak(0)
    for task in range(100):
        streak.record(task, ERROR)
    assert not streak.suspect


def test_a_flaky_dataset_does_not_make_a_healthy_node_suspect():
    # One task in five fails wherever it runs: five in a row happen by chance (the production
    # trial's pilots left healthy nodes as suspect); such a dataset needs about ten.
    rng = random.Random(3)
    streak = FailureStreak(5)
    for task in range(15_000):
        streak.record(task, ERROR if rng.random() < 0.2 else None, "flaky", dataset=12)
        assert not streak.suspect, f"suspect after task {task}"
    failures = 0
    while not streak.suspect:  # the node breaks now
        failures += 1
        streak.record(100_000 + failures, ERROR, "disk full", dataset=12)
    assert 9 <= failures <= 11


def test_a_node_that_breaks_after_running_a_healthy_dataset_is_suspect_at_the_fifth():
    streak = FailureStreak(5)
    for task in range(50):
        streak.record(task, None, dataset=7)
    for task in range(100, 105):
        assert not streak.suspect
        streak.record(task, ErrorClass.STAGING_ERROR, "no space left on device", dataset=7)
    assert streak.suspect


def test_fresh_pilots_on_healthy_nodes_are_seldom_suspect_for_a_flaky_dataset():
    # Only a pilot whose very first tasks all fail can be (2 ** -5 of them at one failure in
    # two: no task has run to the end there yet, as on a broken node).
    rng = random.Random(9)
    for rate, most in ((0.2, 0.001), (0.5, 0.04)):
        suspect = 0
        for _ in range(2000):
            streak = FailureStreak(5)
            for task in range(200):
                streak.record(task, ERROR if rng.random() < rate else None, dataset=1)
                if streak.suspect:
                    suspect += 1
                    break
        assert suspect / 2000 <= most, (rate, suspect)
