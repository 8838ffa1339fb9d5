"""Retry rules of a dataset, decided on real reports: the first rule that matches a failure (by
error class, exit code, stderr) decides how many failures the task may have and grows its
memory and walltime; a failure none matches is retried up to max_retries."""

from __future__ import annotations

from floe.config.dataset import ConfigError, validate
from floe.config.resources import GIB
from floe.matchmaker.lifecycle import Outcome
from floe.matchmaker.storage import queries

from . import support as s

RULES = [{"exit_code": [2], "retries": 0},
         {"error_class": ["task_error"], "stderr": "std::bad_alloc", "retries": 2,
          "grow_memory": 2, "grow_walltime": 1.5}]


def failed(exit_code: int, stderr: str = "", message: str = "") -> Outcome:
    return Outcome.from_dict({"exit_code": exit_code, "error_class": "task_error",
                              "error_message": message or f"module gen exited with code "
                                                          f"{exit_code}",
                              "stderr_tail": stderr})


async def world(engine):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=3, retry_rules=RULES, tasks=[
        s.task("gen", memory="2GiB", walltime="1h"), s.task("merge", ["gen"])]))
    return dataset, await s.pilot(engine, site)


async def test_a_rule_with_no_retries_fails_the_task_and_its_dependents_at_once(engine):
    dataset, pilot = await world(engine)
    given = await s.ask(engine, pilot, s.slot(memory=64 * GIB))
    await s.finish(engine, given, failed(2, "usage: gen --seed N"))
    job, _ = dataset.locate(given.task_id)
    assert (s.state_of(dataset, job, 0), s.state_of(dataset, job, 1)) == ("failed", "failed")
    task = await queries.task(engine.db, given.task_id)
    assert task["reason"] == ("failed once (retry rule 1 (exit code 2); it allows 0 failures); "
                              "last: task_error: module gen exited with code 2")


async def test_a_matching_rule_grows_memory_and_walltime_and_counts_its_own_retries(engine):
    dataset, pilot = await world(engine)
    slot = s.slot(memory=64 * GIB)
    given = await s.ask(engine, pilot, slot)
    task_id = given.task_id
    for expected_memory, expected_walltime in ((4 * GIB, 5400), (8 * GIB, 8100)):
        await s.finish(engine, given, failed(134, "terminate called: std::bad_alloc\n"))
        assert dataset.state(task_id).value == "ready"
        grown = dataset.requirements(task_id)
        assert (grown.memory, grown.walltime) == (expected_memory, expected_walltime)
        given = await s.ask(engine, pilot, slot)
        assert given.task_id == task_id
    row = await queries.task(engine.db, task_id)
    assert row["reason"].startswith("retry 2 of 2 (retry rule 2 (task_error, stderr "
                                    "'std::bad_alloc')) after task_error: module gen exited")
    assert "requirement grown: memory 4GiB -> 8GiB, walltime 1h30m -> 2h15m" in row["reason"]
    await s.finish(engine, given, failed(134, "std::bad_alloc"))
    assert dataset.state(task_id).value == "failed"


async def test_a_failure_no_rule_matches_is_retried_up_to_max_retries(engine):
    dataset, pilot = await world(engine)
    slot = s.slot(memory=64 * GIB)
    given = await s.ask(engine, pilot, slot)
    for _ in range(3):  # max_retries 3
        await s.finish(engine, given, failed(1, "Segmentation fault"))
        assert dataset.state(given.task_id).value == "ready"
        assert dataset.requirements(given.task_id).memory == 2 * GIB
        given = await s.ask(engine, pilot, slot)
    await s.finish(engine, given, failed(1))
    row = await queries.task(engine.db, given.task_id)
    assert row["reason"].startswith("failed 4 times (max_retries 3); last: task_error")


def test_rules_are_checked_when_the_dataset_is_submitted():
    document = {"jobs": 1, "tasks": [{"name": "a", "modules": [{"command": "true"}]}],
                "retry_rules": [{"exit_code": [2]},
                                {"error_class": ["pilot_lost"], "retries": 1, "grow_memory": 0.5}]}
    try:
        validate(document)
    except ConfigError as err:
        said = str(err)
    assert "retry_rules[0].retries: missing" in said
    assert 'retry_rules[1].error_class[0]: expected one of "resource_overuse", ' \
           '"staging_error", "task_error", got "pilot_lost"' in said
    assert "retry_rules[1].grow_memory: expected a number from 1 to 16, got 0.5" in said


async def test_a_retry_backs_off_doubling_and_says_until_when(engine, clock):
    from floe.matchmaker.waiting import Explainer

    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    dataset = await s.submit(engine, alice, s.config(jobs=1, retry_delay="30s"))
    pilot = await s.pilot(engine, site)
    given = await s.ask(engine, pilot)
    await s.finish(engine, given, failed(1))
    assert await s.ask(engine, pilot) is None  # backing off: nothing for 30 s
    assert Explainer(engine).why(dataset, given.task_id).startswith(
        "backing off before its retry: it may run again in 30s")
    assert Explainer(engine).summary(dataset) == [{
        "task": "work", "tasks": 1,
        "why": "backing off before their retry: the first may run again in 30s"}]
    clock.advance(29)
    assert await s.ask(engine, pilot) is None
    clock.advance(1)
    given = await s.ask(engine, pilot)
    assert given is not None
    await s.finish(engine, given, failed(1))  # the second retry waits twice as long
    clock.advance(59)
    assert await s.ask(engine, pilot) is None
    clock.advance(1)
    assert (await s.ask(engine, pilot)).task_id == given.task_id


async def test_a_retry_goes_to_another_host_while_there_is_one(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    await s.submit(engine, alice, s.config(jobs=1))  # retry_elsewhere: 10m by default
    first = await s.pilot(engine, site, "node1")
    given = await s.ask(engine, first)
    await s.finish(engine, given, failed(1, "ImportError: libcuda.so.1"))
    # The only host: the retry goes back to it at once.
    again = await s.ask(engine, first)
    assert again is not None and again.task_id == given.task_id
    await s.finish(engine, again, failed(1, "ImportError: libcuda.so.1"))
    second = await s.pilot(engine, site, "node2")
    assert await s.ask(engine, first) is None  # not on node1 while node2 runs a pilot ...
    taken = await s.ask(engine, second)  # ... which is not told that nothing fits its shape
    assert taken is not None and taken.task_id == given.task_id
    await s.finish(engine, taken, failed(1, "out of disk"))
    clock.advance(600)  # node2 failed it too; after 10 minutes node2 may have it again
    assert (await s.ask(engine, second)).task_id == given.task_id
