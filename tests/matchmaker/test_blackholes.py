"""Which hosts the matchmaker takes for black holes, from the attempts that end there: a host
where every task of a healthy dataset fails at once is kept out at the fifth failure, one where
a dataset that also fails elsewhere fails needs more in a row, and hosts running a flaky
dataset are never blamed for its failures (with live pilots: tests/pilot/test_black_holes.py)."""

from __future__ import annotations

import random

from floe.config.settings import server_settings
from floe.config.states import ErrorClass
from floe.matchmaker.blackholes import BlackHoles

FAILED = ErrorClass.TASK_ERROR


def holes() -> BlackHoles:
    return BlackHoles(server_settings({}))


def fail_until_kept_out(black_holes: BlackHoles, host: str, dataset_id: int,
                        first_task: int) -> int:
    """Failures of different tasks on `host` until it is kept out; how many it took."""
    for count in range(1, 100):
        if black_holes.ended(host, "site-a", first_task + count, FAILED, "no libcuda", 1.0,
                             0.0, proven=True, dataset_id=dataset_id):
            return count
    raise AssertionError(f"{host} was never kept out")


def test_a_host_failing_every_task_of_a_healthy_dataset_is_kept_out_at_the_fifth():
    black_holes = holes()
    for task_id in range(20):  # the dataset runs well elsewhere
        black_holes.ended("good", "site-a", task_id, None, "", 10.0, 0.0, proven=True,
                          dataset_id=1)
    assert fail_until_kept_out(black_holes, "bad", 1, 100) == 5
    [suspect] = black_holes.current(0.0)
    assert suspect.host == "bad" and suspect.why.startswith("5 different tasks failed here")


def test_a_dataset_that_fails_one_time_in_five_elsewhere_needs_about_ten_in_a_row():
    rng = random.Random(5)
    black_holes = holes()
    for task_id in range(2000):  # elsewhere, a fifth of its tasks fail
        black_holes.ended(f"good{task_id % 7}", "site-a", task_id,
                          FAILED if rng.random() < 0.2 else None, "flaky", 1.0, 0.0,
                          proven=True, dataset_id=2)
    assert black_holes.current(0.0) == []
    assert 9 <= fail_until_kept_out(black_holes, "bad", 2, 10_000) <= 11


def test_hosts_running_a_flaky_dataset_are_not_blamed_for_its_failures():
    # 15,000 attempts of tasks that fail one time in five, on three hosts: five failures in a
    # row on one of them happen by chance several times (the production trial found a healthy
    # node kept out for an hour); none may make a host a black hole.
    rng = random.Random(16)
    black_holes = holes()
    streaks, runs = 0, {f"node{n}": 0 for n in range(3)}
    for task_id in range(15_000):
        failed = rng.random() < 0.2
        host = f"node{task_id % 3}"
        black_holes.ended(host, "site-a", task_id, FAILED if failed else None, "flaky", 0.05,
                          0.0, proven=True, dataset_id=3)
        runs[host] = runs[host] + 1 if failed else 0
        streaks += runs[host] == 5
    assert streaks >= 2  # what counting five in a row alone blamed a host for
    assert black_holes.current(0.0) == [] and black_holes.found == 0


def test_a_flaky_dataset_on_a_site_of_one_host_does_not_blame_it():
    # The production trial's site: one host ran all of it, successes and failures alike.
    rng = random.Random(4)
    black_holes = holes()
    for task_id in range(15_000):
        black_holes.ended("vm", "local", task_id, FAILED if rng.random() < 0.2 else None,
                          "flaky", 0.05, 0.0, proven=True, dataset_id=4)
    assert black_holes.found == 0


def test_a_host_that_breaks_again_after_its_cool_down_is_kept_out_as_soon():
    black_holes = holes()
    for task_id in range(20):  # a site of one host: it ran the dataset well
        black_holes.ended("only", "site-a", task_id, None, "", 10.0, 0.0, proven=True,
                          dataset_id=5)
    rounds = []
    for round_ in range(4):  # broken for good: kept out, back after its hour, out again
        now = round_ * 3601.0
        for count in range(1, 100):
            if black_holes.ended("only", "site-a", 1000 * (round_ + 1) + count, FAILED,
                                 "disk full", 1.0, now, proven=True, dataset_id=5):
                break
        rounds.append(count)
        for late in range(8):  # tasks it was running then, failing after it was kept out
            black_holes.ended("only", "site-a", 1000 * (round_ + 1) + 500 + late, FAILED,
                              "disk full", 1.0, now, proven=True, dataset_id=5)
    assert rounds == [5, 5, 5, 5]


def test_hosts_breaking_together_are_each_kept_out_at_the_fifth():
    # A site-wide mount going stale: each host's failures are no evidence that the dataset
    # fails elsewhere.
    black_holes = holes()
    for task_id in range(20):
        black_holes.ended("good", "site-b", task_id, None, "", 10.0, 0.0, proven=True,
                          dataset_id=8)
    found = {}
    for task_id in range(100, 300):
        host = f"wn{task_id % 20}"
        if host not in found and black_holes.ended(host, "site-a", task_id, FAILED,
                                                   "stale file handle", 1.0, 0.0,
                                                   proven=True, dataset_id=8):
            found[host] = task_id
    assert len(found) == 20
    assert max(found.values()) == 100 + 4 * 20 + 19  # each at its fifth failure


def test_a_task_retried_on_the_same_broken_host_counts_once_and_not_as_flakiness():
    black_holes = holes()
    for task_id in range(20):
        black_holes.ended("good", "site-a", task_id, None, "", 10.0, 0.0, proven=True,
                          dataset_id=6)
    attempts = 0
    for task_id in range(100, 120):
        for _ in range(3):  # each task fails there on its retries too
            attempts += 1
            if black_holes.ended("bad", "site-a", task_id, FAILED, "no libcuda", 1.0, 0.0,
                                 proven=True, dataset_id=6):
                break
        else:
            continue
        break
    assert (task_id - 99, attempts) == (5, 13)
