"""What of the slot the pilot offers while tasks run: the slot less their claims, GPUs claimed
as devices so that no two tasks share one."""

from __future__ import annotations

import pytest

from floe.config.resources import GIB, Requirements
from floe.pilot.claims import ClaimError, Claims
from floe.pilot.gpus import Gpu
from floe.pilot.slot import MeasuredSlot

GPUS = (Gpu(0, "GPU-aaaa", "A100", 40 * GIB), Gpu(1, "GPU-bbbb", "A100", 40 * GIB))


def slot(cpus: int = 4, gpus: tuple[Gpu, ...] = GPUS) -> MeasuredSlot:
    return MeasuredSlot(cpus=cpus, memory=8 * GIB, disk=100 * GIB, gpus=gpus, deadline=None,
                        os=("debian12", "linux"), arch="x86_64", python="3.9", host="node1",
                        site="site-a", batch_system="slurm", batch_job_id="7", scratch="/tmp")


def test_the_offer_is_the_slot_less_what_running_tasks_claimed():
    claims = Claims(slot())
    claims.claim(Requirements(cpus=1, memory=2 * GIB, disk=10 * GIB, gpus=1))
    offer = claims.offer()
    assert (offer.cpus, offer.memory, offer.disk, offer.gpus) == (3, 6 * GIB, 90 * GIB, 1)
    assert (offer.os, offer.arch) == (("debian12", "linux"), "x86_64")


def test_each_task_gets_gpus_no_other_task_holds():
    claims = Claims(slot())
    first = claims.claim(Requirements(cpus=1, memory=GIB, gpus=1))
    second = claims.claim(Requirements(cpus=1, memory=GIB, gpus=1))
    assert [first.gpus, second.gpus] == [(GPUS[0],), (GPUS[1],)]
    claims.release(first)
    assert claims.free_gpus() == [GPUS[0]]
    assert claims.claim(Requirements(cpus=1, memory=GIB, gpus=1)).gpus == (GPUS[0],)


def test_a_cpu_task_claims_no_gpu():
    claims = Claims(slot())
    assert claims.claim(Requirements(cpus=2, memory=GIB)).gpus == ()
    assert claims.free_gpus() == list(GPUS)


def test_a_task_larger_than_what_is_free_is_refused_with_what_is_short():
    claims = Claims(slot(cpus=2))
    claims.claim(Requirements(cpus=2, memory=GIB))
    with pytest.raises(ClaimError, match=r"1 CPUs \(0 free\)") as refused:
        claims.claim(Requirements(cpus=1, memory=GIB, gpus=3))
    assert "3 GPUs (2 free)" in str(refused.value)


def test_nothing_is_offered_once_every_cpu_is_claimed_and_all_of_it_after_release():
    claims = Claims(slot(cpus=2))
    held = [claims.claim(Requirements(cpus=1, memory=GIB)) for _ in range(2)]
    assert not claims.can_offer() and claims.busy
    for claim in held:
        claims.release(claim)
    assert claims.can_offer() and not claims.busy
    assert claims.offer().cpus == 2
