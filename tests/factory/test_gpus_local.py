"""GPU shapes with the local plugin, cycle by cycle with a real matchmaker and real pilots: each
pilot gets GPUs of its own, a shape that needs more than are free waits (and says so), and the
GPU tasks run on the devices their pilots were given. The machine's devices are a declared list
(the plugin's `gpus` option, the pilots' FLOE_NODE_GPUS), as on a node without NVML."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from floe.config.factory import factory_config
from floe.plugins import PilotState
from tests.pilot.live import LiveMatchmaker

from .conftest import site_document
from .test_site_local import cycle_until, live_pilots

DEVICES = [{"uuid": "GPU-0aa1b2c3-0000-4000-8000-000000000001", "name": "Test GPU",
            "memory": 16 * 2**30, "compute_capability": [8, 0]},
           {"uuid": "GPU-0aa1b2c3-0000-4000-8000-000000000002", "name": "Test GPU",
            "memory": 16 * 2**30, "compute_capability": [8, 0]}]
GPU_SHAPE = {"name": "gpu", "cpus": 1, "memory": "512MiB", "disk": "1GiB", "gpus": 1,
             "walltime": "20m"}


def gpu_dataset(jobs: int, seconds: float) -> dict:
    return {"description": "GPU work", "jobs": jobs, "tasks": [{
        "name": "photons",
        "requirements": {"cpus": 1, "gpus": 1, "memory": "64MB", "disk": "1MB",
                         "walltime": "2m"},
        "modules": [{"command": f'echo "on $CUDA_VISIBLE_DEVICES"; sleep {seconds}'}]}]}


def gpu_site(matchmaker: LiveMatchmaker, workdir: Path, devices: list[dict], **site) -> dict:
    return site_document(
        matchmaker, workdir, shapes=[dict(GPU_SHAPE)], max_total=3, max_queued=3,
        max_per_cycle=3, options={"gpus": [d["uuid"] for d in devices]},
        environment={"FLOE_NODE_GPUS": json.dumps(DEVICES)}, **site)


def held_gpus(site) -> list[list[str]]:
    """The devices each live pilot of the site was given, from the plugin's records."""
    live = set(live_pilots(site))
    return [json.loads(path.read_text())["gpus"] for path in site.plugin.state_dir.glob("*.json")
            if path.stem in live]


def test_each_pilot_gets_its_own_gpu_and_a_third_waits_for_one(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    dataset = matchmaker.submit(gpu_dataset(3, seconds=4))
    site = make_runner(gpu_site(matchmaker, tmp_path / "factory", DEVICES))
    with caplog.at_level(logging.WARNING, logger="floe.factory.site"):
        decision = site.cycle()
    assert decision is not None and decision.submit == {"gpu": 3}  # what the demand asks for
    assert site.counters.submitted == 2                              # what the GPUs allow
    given = held_gpus(site)
    assert sorted(given) == [[DEVICES[0]["uuid"]], [DEVICES[1]["uuid"]]]
    assert ("2 of 3 gpu pilots wanted started now, the others waiting for GPUs: the machine "
            "has 2 (the local plugin's gpus option), live pilots hold 0, and a gpu pilot needs "
            "1") in caplog.text
    site.cycle()
    assert site.counters.submitted == 2
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["waiting"]["gpu"] == (
        "waiting for GPUs: the machine has 2 (the local plugin's gpus option), live pilots "
        "hold 2, and a gpu pilot needs 1")

    def never_shared() -> bool:
        devices = [uuid for held in held_gpus(site) for uuid in held]
        assert len(devices) == len(set(devices)) <= 2, devices
        return set(matchmaker.states(dataset)) == {"complete"}

    cycle_until(site, never_shared, 120, "the GPU tasks to complete")
    ran_on = set()
    for attempt in matchmaker.attempts(dataset):
        if attempt["state"] == "complete":
            tail = matchmaker.get(f"/attempts/{attempt['attempt_id']}")["stdout_tail"]
            ran_on.add(tail.split()[-1])
    assert ran_on <= {d["uuid"] for d in DEVICES} and ran_on
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert "gpu" not in status.get("waiting", {})


def test_a_machine_without_gpus_starts_no_gpu_pilot_and_says_why(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    matchmaker.submit(gpu_dataset(1, seconds=0))
    site = make_runner(gpu_site(matchmaker, tmp_path / "factory", []))
    for _ in range(3):
        site.cycle()
    assert site.counters.submitted == 0
    assert not [i for i in site.plugin.status().values() if i.state is not PilotState.FINISHED]
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["waiting"]["gpu"] == (
        "waiting for GPUs: this machine has none to give (the local plugin's gpus option); list "
        "them in the local plugin's gpus option")


@pytest.mark.parametrize("gpus", ["all", ["GPU-1,GPU-2"], [""], [3]])
def test_the_gpus_option_is_checked(matchmaker: LiveMatchmaker, make_runner, tmp_path: Path,
                                    gpus):
    from floe.plugins.base import PluginConfigError

    with pytest.raises(PluginConfigError, match='local option gpus: "auto" or a list'):
        make_runner(site_document(matchmaker, tmp_path / "factory", options={"gpus": gpus}))


def test_a_shape_whose_pilots_find_no_gpu_costs_one_pilot_per_back_off_and_says_why(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    """The plugin hands the pilot a device, but the node does not show it (no NVML, nothing
    declared): the pilot registers short of its shape, and the shape is held back."""
    dataset = matchmaker.submit(gpu_dataset(1, seconds=0))
    document = gpu_site(matchmaker, tmp_path / "factory", DEVICES, backoff="20s")
    del document["sites"][0]["environment"]
    site = make_runner(document)
    with caplog.at_level(logging.WARNING, logger="floe.factory.site"):
        cycle_until(site, lambda: "gpu" in site.holds.held, 60, "the shape to be held")
        held_at = site.counters.submitted  # those submitted before the first pilot was heard
        for _ in range(8):  # the wait is 20 s: these cycles submit nothing more
            site.cycle()
            time.sleep(0.5)
    assert site.counters.submitted == held_at <= 2
    # Its pilots leave empty too, but that is said already: the hold stays the shortfall's.
    assert site.holds.held["gpu"].kind == "short" and "gpu" not in site._empty_row
    warning = next(r.getMessage() for r in caplog.records if "promises" in r.getMessage())
    assert "found less than the gpu shape promises: gpus: promised 1, found 0 (no GPUs: " \
        in warning
    assert ("Likely: the pilot found none of the GPUs it was given: where NVML cannot be used "
            "(the finding says), declare the machine's GPUs with FLOE_NODE_GPUS in the site's "
            "environment") in warning
    assert "No gpu pilot is submitted for 20 s, then one to try again" in warning
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["held_shapes"]["gpu"]["why"].startswith("pilot ")
    assert status["held_shapes"]["gpu"]["wait_left"] > 10

    # The admin declares the devices: the new config ends the hold, and the work is done.
    document["sites"][0]["environment"] = {"FLOE_NODE_GPUS": json.dumps(DEVICES)}
    config = factory_config(document)
    site.reconfigure(config, config.sites[0], site.token)
    assert not site.holds.held
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 90,
                "the GPU task to complete")
    assert not json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())[
        "held_shapes"]
