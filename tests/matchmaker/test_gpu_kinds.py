"""Tasks that ask for a kind of GPU (least memory, a model pattern, least compute capability):
the shared fit rule, matching on a real engine, the pilot choosing its devices, and the demand
counting them for the shapes that describe such GPUs."""

from __future__ import annotations

import pytest

from floe.config.dataset import validate
from floe.config.resources import GIB, GpuKind, Requirements, Slot, parse_capability, why_not
from floe.matchmaker import demand as pilot_demand
from floe.matchmaker import dispatch
from floe.pilot.claims import ClaimError, Claims
from floe.pilot.gpus import Gpu
from floe.pilot.slot import MeasuredSlot

from . import support as s

H100 = GpuKind(80 * GIB, "NVIDIA H100 80GB HBM3", (9, 0))
T4 = GpuKind(16 * GIB, "Tesla T4", (7, 5))
BIG = Requirements(gpus=1, gpu_memory=40 * GIB)
HOPPER = Requirements(gpus=1, gpu_model="*h100*", compute_capability=(9, 0))


def gpu_slot(*kinds: GpuKind, cpus: int = 4) -> Slot:
    return Slot(cpus=cpus, memory=32 * GIB, disk=100 * GIB, gpus=len(kinds),
                os=("debian12", "linux"), arch="x86_64", site="site-a", gpu_kinds=kinds)


@pytest.mark.parametrize(("req", "kinds", "reason"), [
    (BIG, (H100,), None),
    (BIG, (T4,), "needs 1 GPUs with at least 40GiB memory, slot has 0 such (Tesla T4)"),
    (HOPPER, (T4, H100), None),
    (HOPPER, (T4,), "needs 1 GPUs with a model *h100*, compute capability 9.0 or more, slot "
                    "has 0 such (Tesla T4)"),
    (Requirements(gpus=2, gpu_memory=40 * GIB), (H100, T4),
     "needs 2 GPUs with at least 40GiB memory, slot has 1 such (NVIDIA H100 80GB HBM3/Tesla T4)"),
    (Requirements(gpus=1, compute_capability=(8, 0)), (GpuKind(),), None),  # nothing known
    (Requirements(gpus=1), (T4,), None),  # no kind asked: any GPU
])
def test_the_fit_rule_for_a_kind_of_gpu(req, kinds, reason):
    assert why_not(req, gpu_slot(*kinds)) == reason


def test_a_slot_that_describes_no_gpu_is_judged_by_its_count():
    """An older pilot, or a shape that says nothing of its GPUs."""
    undescribed = Slot(cpus=4, memory=32 * GIB, disk=100 * GIB, gpus=1)
    assert why_not(BIG, undescribed) is None
    assert why_not(Requirements(gpus=2, gpu_memory=GIB), undescribed) == "needs 2 GPUs, slot has 1"


def test_what_is_left_of_a_slot_keeps_the_gpus_a_task_did_not_take():
    slot = gpu_slot(H100, T4, GpuKind(24 * GIB, "NVIDIA A10", (8, 6)))
    left = slot.less(Requirements(cpus=1, memory=GIB, disk=GIB, gpus=1, gpu_memory=20 * GIB))
    assert left.gpu_kinds == (H100, T4)  # the least GPU that fits went: the A10
    assert (left.cpus, left.gpus) == (3, 2)
    assert why_not(HOPPER, left) is None and why_not(BIG, left.less(HOPPER)) is not None


def test_a_task_config_names_a_gpu_kind_only_beside_gpus():
    document = {"jobs": 1, "tasks": [{"name": "photons", "requirements": {
        "gpus": 1, "gpu_memory": "40GiB", "gpu_model": "*H100*", "compute_capability": "9.0"},
        "modules": [{"command": ["true"]}]}]}
    needs = validate(document).tasks[0].requirements
    assert (needs.gpu_memory, needs.gpu_model, needs.compute_capability) == (
        40 * GIB, "*H100*", (9, 0))
    assert Requirements.from_dict(needs.to_dict()) == needs
    document["tasks"][0]["requirements"]["gpus"] = 0
    with pytest.raises(ValueError, match="describes the task's GPUs, and it asks for none"):
        validate(document)
    assert parse_capability("8") == (8, 0) and parse_capability([7, 5]) == (7, 5)
    with pytest.raises(ValueError, match="not a compute capability"):
        parse_capability("Hopper")


async def test_matching_gives_a_gpu_kind_only_to_a_pilot_that_has_it(engine, clock):
    site = await s.site(engine)
    alice = await s.user(engine, "alice")
    task = s.task("photons", gpus=1, gpu_memory="40GiB", gpu_model="*H100*")
    dataset = await s.submit(engine, alice, s.config(jobs=3, tasks=[task]))
    small = await s.pilot(engine, site)
    answer = await dispatch.ask(engine, small, gpu_slot(T4))
    assert isinstance(answer, dispatch.NoWork)
    assert "needs 1 GPUs with at least 40GiB memory, a model *H100*" in answer.reason
    given = await s.ask(engine, await s.pilot(engine, site, "node2"), gpu_slot(T4, H100))
    assert given is not None and given.dataset is dataset
    # Side by side, one H100 holds one of the two tasks left: the T4 beside it holds none.
    offer = dispatch.Offer(gpu_slot(H100, T4, cpus=8), max_tasks=4, in_series=False)
    more = await dispatch.ask(engine, await s.pilot(engine, site, "node3"), offer)
    assert len(more.attempts) == 1


def test_the_pilot_gives_a_task_the_devices_of_its_kind():
    t4 = Gpu(0, "GPU-t4", "Tesla T4", 16 * GIB, (7, 5))
    h100 = Gpu(1, "GPU-h100", "NVIDIA H100 80GB HBM3", 80 * GIB, (9, 0))
    slot = MeasuredSlot(cpus=8, memory=64 * GIB, disk=100 * GIB, gpus=(t4, h100), deadline=None,
                        os=("debian12",), arch="x86_64", python="3.11", host="n", site="a",
                        batch_system="none", batch_job_id="", scratch="/tmp")
    claims = Claims(slot)
    assert claims.offer().gpu_kinds == (GpuKind(16 * GIB, "Tesla T4", (7, 5)),
                                        GpuKind(80 * GIB, "NVIDIA H100 80GB HBM3", (9, 0)))
    assert claims.claim(HOPPER).gpus == (h100,)
    with pytest.raises(ClaimError, match=r"1 GPUs with a model \*h100\*.*\(0 free\)"):
        claims.claim(HOPPER)
    assert claims.offer().gpu_kinds == (GpuKind(16 * GIB, "Tesla T4", (7, 5)),)
    assert claims.claim(Requirements(gpus=1)).gpus == (t4,)


def test_the_demand_counts_a_gpu_kind_for_the_shapes_that_describe_it():
    a100 = {"name": "a100", "cpus": 8, "memory": 64 * GIB, "disk": 100 * GIB, "gpus": 1,
            "walltime": 86400, "gpu_memory": 40 * GIB, "gpu_model": "NVIDIA A100-SXM4-40GB",
            "compute_capability": "8.0"}
    unsaid = dict(a100, gpu_memory=0, gpu_model="", compute_capability="")
    assert pilot_demand.shape_gpus(a100) == (GpuKind(40 * GIB, "NVIDIA A100-SXM4-40GB",
                                                     (8, 0)),)
    assert pilot_demand.shape_gpus(unsaid) == ()
    shape = Slot(8, 64 * GIB, 100 * GIB, 1, 86400, gpu_kinds=pilot_demand.shape_gpus(a100))
    assert why_not(HOPPER, shape, "the shape") == (
        "needs 1 GPUs with a model *h100*, compute capability 9.0 or more, the shape has 0 "
        "such (NVIDIA A100-SXM4-40GB)")
    assert why_not(HOPPER, Slot(8, 64 * GIB, 100 * GIB, 1, 86400), "the shape") is None
