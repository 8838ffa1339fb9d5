"""Black-hole protection: consecutive failures of different tasks make a node suspect; one task
failing on its retries, overuse, and requeues do not."""

from __future__ import annotations

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


def test_the_failures_of_a_dataset_that_ran_to_the_end_here_no_longer_count():
    # A dataset failing one time in five: five failures in a row on a healthy node happen by
    # chance (the production trial's pilots left such nodes as suspect).
    streak = FailureStreak(3)
    streak.record(1, None, dataset=12)
    for task in range(2, 8):
        streak.record(task, ERROR, "flaky", dataset=12)
    assert streak.length == 0 and not streak.suspect
    for task in range(8, 11):  # another dataset, never run to the end here, still counts
        streak.record(task, ERROR, "libfoo.so: cannot open shared object file", dataset=13)
    assert streak.suspect
