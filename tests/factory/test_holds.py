"""Held shapes on their own: the wait doubles per finding that begins one, a finding during the
wait does not lengthen it, one pilot may go per wait once it is over, and a pilot that finds all
it was promised (or a new config) ends it."""

from __future__ import annotations

from floe.factory.holds import Holds, describe, likely_fix


def test_a_held_shape_gets_one_pilot_per_wait_and_the_wait_doubles():
    holds = Holds(backoff=30, max_backoff=100)
    assert holds.allowed("gpu", 4, 0) == 4
    first = holds.hold("gpu", "pilot 1 found no GPU", now=0)
    assert (first.wait, first.until) == (30, 30)
    assert holds.hold("gpu", "pilot 2 found no GPU", now=10) is None  # seen while waiting
    assert holds.held["gpu"].until == 30 and holds.held["gpu"].why == "pilot 2 found no GPU"
    assert holds.allowed("gpu", 4, 29) == 0
    assert holds.allowed("gpu", 4, 30) == 1   # the wait is over: one goes to try again
    assert holds.allowed("gpu", 4, 31) == 0   # and the next only after another wait
    assert holds.allowed("gpu", 4, 60) == 1
    second = holds.hold("gpu", "pilot 3 found no GPU", now=70)
    assert second.wait == 60 and holds.hold("gpu", "again", now=200).wait == 100  # capped
    assert holds.allowed("cpu", 2, 70) == 2   # other shapes go on
    assert holds.to_dict(250) == {"gpu": {"why": "again", "kind": "short", "tries": 3,
                                          "wait_left": 50}}
    assert not holds.release("gpu", "empty")  # a task ran: that ends no shortfall
    assert holds.release("gpu") and not holds.release("gpu")
    assert holds.allowed("gpu", 4, 251) == 4
    holds.hold("gpu", "x", now=300)
    assert holds.clear() and not holds.held and not holds.clear()


def test_findings_read_as_sizes_and_durations_with_a_fix_for_the_batch_system():
    assert describe({"resource": "memory", "promised": 32 * 2**30, "found": 16 * 2**30,
                     "source": "SLURM_MEM_PER_NODE"}) == (
        "memory: promised 32GiB, found 16GiB (SLURM_MEM_PER_NODE)")
    assert describe({"resource": "walltime", "promised": 14400, "found": 3300}) == (
        "walltime: promised 4h, found 55m")
    assert "--gres" in likely_fix("gpus", "slurm")
    assert "request_gpus" in likely_fix("gpus", "htcondor")
    assert "lower the shape's memory" in likely_fix("memory", "pbs")
