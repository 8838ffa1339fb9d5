"""One site's factory loop with the local plugin, a real matchmaker and real pilots (the bundle),
cycle by cycle: backlog to done, no matchable work, pilots dying at start, restarts and
orphans, stopping."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path

from floe.factory.matchmaker import SiteClient
from floe.factory.policy import ShapeCounts
from floe.plugins import PilotState
from tests.pilot.live import LiveMatchmaker, wait_for
from tests.pilot.scripted import ScriptedPilot
from tests.plugins.pilots import fake_command

from .conftest import SHAPE, dag_dataset, site_document


def live_pilots(site) -> list[str]:
    return [batch_id for batch_id, info in site.plugin.status().items()
            if info.state is not PilotState.FINISHED]


def cycle_until(site, check, timeout: float = 90.0, what: str = "the condition"):
    def turn():
        site.cycle()
        if check():
            return True
        time.sleep(0.3)
        return False
    return wait_for(turn, timeout, what)


def test_a_backlog_of_dag_jobs_is_run_by_pilots_that_then_leave(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    dataset = matchmaker.submit(dag_dataset(10))
    site = make_runner(site_document(matchmaker, tmp_path / "factory"))
    first = site.cycle()
    assert first is not None and first.submit == {"small": 4}   # max_per_cycle, max_total
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 120,
                "every task to complete")
    cycle_until(site, lambda: not site.pilots and not live_pilots(site), 60,
                "the pilots to leave")
    submitted = site.counters.submitted
    for _ in range(3):                     # the work is gone: nothing more is submitted
        site.cycle()
    assert site.counters.submitted == submitted
    assert site.counters.died_at_start == site.counters.ended_unregistered == 0
    pilots = matchmaker.get("/pilots?site=site-a")["pilots"]
    assert len(pilots) == submitted
    assert all(p["state"] == "exited" for p in pilots)
    attempts = matchmaker.attempts(dataset)
    assert len(attempts) == 20
    assert sum(p["attempts_run"] for p in pilots) == 20 and all(
        p["attempts"] == [] for p in pilots)
    assert {a["batch_id"] for a in attempts} <= {p["batch_id"] for p in pilots}
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["tracked"] == 0 and status["health"]["failing"] is False


def test_no_pilot_is_submitted_for_a_site_with_no_matchable_work(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    elsewhere = dag_dataset(5)
    for task in elsewhere["tasks"]:
        task["requirements"]["sites"] = ["site-z"]
    matchmaker.submit(elsewhere)
    too_big = dag_dataset(5)
    too_big["tasks"][0]["requirements"]["memory"] = "64GiB"
    matchmaker.submit(too_big)
    site = make_runner(site_document(matchmaker, tmp_path / "factory"))
    for _ in range(5):
        decision = site.cycle()
        assert decision is not None and decision.submit == {"small": 0}
    assert site.counters.submitted == 0
    assert live_pilots(site) == []


def test_pilots_that_die_at_start_back_the_failing_site_off(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    matchmaker.submit(dag_dataset(20))
    # Whatever min_pilot_life says: a pilot that never registered is a failure.
    document = site_document(matchmaker, tmp_path / "factory", python="/bin/false",
                             min_pilot_life="0s", failing_after=3, backoff="60s")
    site = make_runner(document)
    assert site.cycle().submit == {"small": 4}
    cycle_until(site, lambda: site.counters.ended_unregistered == 4, 30, "the pilots to die")
    assert site.counters.died_at_start == 0
    assert site.health.failing
    assert site.health.backing_off(time.time())
    again = site.cycle()
    assert again.submit == {"small": 0}
    assert any("backing off" in reason for reason in again.reasons)
    assert site.counters.submitted == 4
    assert "site site-a is failing" in caplog.text
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["health"]["failing"] is True
    assert "ended without registering with the matchmaker" in status["health"]["last_error"]


def test_a_restarted_factory_keeps_its_pilots_and_one_that_lost_its_state_removes_them(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    slow = dag_dataset(4)
    slow["tasks"][0]["modules"] = [{"command": "sleep 60"}]
    dataset = matchmaker.submit(slow)
    document = site_document(matchmaker, tmp_path / "factory")
    first = make_runner(document)
    first.cycle()
    ours = sorted(first.pilots)
    assert len(ours) == 4
    wait_for(lambda: matchmaker.states(dataset).count("processing") == 4, 30,
             "the pilots to take the tasks")

    restarted = make_runner(document)
    assert sorted(restarted.pilots) == ours
    restarted.cycle()
    assert restarted.counters.orphans_removed == 0
    assert sorted(live_pilots(restarted)) == ours

    (tmp_path / "factory" / "site-a" / "pilots.json").unlink()
    forgetful = make_runner(document)
    forgetful.cycle()
    assert forgetful.counters.orphans_removed == 4
    wait_for(lambda: not set(ours) & set(live_pilots(forgetful)), 30, "the orphans to be gone")
    # Their tasks were requeued, not failed: the pilots drained on SIGTERM.
    wait_for(lambda: "processing" not in matchmaker.states(dataset), 30, "the requeue")
    assert "failed" not in matchmaker.states(dataset)


def test_stopping_removes_what_on_stop_says(matchmaker: LiveMatchmaker, make_runner,
                                            tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, "floe.factory")
    slow = dag_dataset(2)
    slow["tasks"][0]["modules"] = [{"command": "sleep 60"}]
    matchmaker.submit(slow)
    kept = make_runner(site_document(matchmaker, tmp_path / "keep",
                                                    on_stop="keep", max_total=1,
                                                    max_queued=1))
    kept.cycle()
    removed = make_runner(site_document(matchmaker, tmp_path / "all",
                                                       on_stop="remove-all", max_total=1,
                                                       max_queued=1))
    removed.cycle()
    running = live_pilots(kept) + live_pilots(removed)
    assert len(running) == 2
    kept.stop()
    removed.stop()
    assert len(live_pilots(kept)) == 1
    wait_for(lambda: not live_pilots(removed), 30, "remove-all to stop the running pilot")
    kept.site = dataclasses.replace(kept.site, on_stop="remove-all")
    kept.stop()
    wait_for(lambda: not live_pilots(kept), 30, "the kept pilot to be removed")
    # One pilot is one pilot in the log, not "1 small pilots".
    assert caplog.messages.count("site site-a: submitted 1 small pilot") == 2
    assert "site site-a: 1 pilot left to run out (on_stop keep)" in caplog.messages
    assert "site site-a: removed 1 pilot on stop (on_stop remove-all), 0 left to run out" in \
        caplog.messages


def test_a_dead_batch_system_is_a_clear_error_and_a_backoff_not_a_crash(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    matchmaker.submit(dag_dataset(2))
    empty = tmp_path / "no-commands"
    empty.mkdir()
    for plugin, options, message in [
            ("htcondor", {}, "HTCondor could not list pilots"),
            ("slurm", {"commands_dir": str(empty)}, "squeue was not found")]:
        site = make_runner(site_document(
            matchmaker, tmp_path / plugin, plugin=plugin, backoff="60s", **options))
        assert site.cycle() is None
        assert message in site.health.last_error
        assert site.health.failures == 1 and site.health.backing_off(time.time())
        status = json.loads((tmp_path / plugin / "site-a" / "status.json").read_text())
        assert message in status["health"]["last_error"]
        assert site.counters.submitted == 0


def test_a_batch_system_that_answers_again_ends_the_sites_wait_at_once(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    matchmaker.submit(dag_dataset(2))
    commands = tmp_path / "commands"
    commands.mkdir()
    site = make_runner(site_document(matchmaker, tmp_path / "factory", plugin="slurm",
                                     backoff="10m", commands_dir=str(commands)))
    for _ in range(3):
        assert site.cycle() is None  # squeue missing: one wait of 10 minutes, not lengthened
    assert site.health.failures == 3 and site.health.wait == 600
    fake_command(commands, "squeue", "exit 0")  # the batch system is back (sbatch is not)
    decision = site.cycle()
    assert decision is not None and decision.submit == {"small": 2}
    assert "the batch system answers again; the wait is over" in caplog.text
    assert "sbatch was not found" in site.health.last_error  # tried at once


def test_a_factory_that_stops_withdraws_the_pilots_it_said_it_had_queued(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    """What a factory said it had queued is subtracted from the other factories' demand; once
    it stops (or its --once cycle ends), it no longer is: before, the claim held for 10
    minutes with no pilot anywhere."""
    matchmaker.submit(dag_dataset(4))
    site = make_runner(site_document(matchmaker, tmp_path / "factory", factory_id="first"))
    other = SiteClient(matchmaker.url, "site-a", matchmaker.site_token, factory="second")

    def needed(client: SiteClient, queued: int) -> int:
        shapes = site._shapes_queued({"small": ShapeCounts("small", queued=queued)})
        return client.demand(shapes)["shapes"][0]["pilots_needed"]

    assert needed(other, 0) == 4
    site.client.pilot_tokens(3, 600)  # each pilot it queues carries one
    needed(site.client, 10**9)  # believed up to the tokens that registered no pilot
    assert needed(other, 0) == 1
    site.stop()
    assert needed(other, 0) == 4


def test_a_shape_whose_pilots_keep_ending_empty_beside_its_work_is_held_back(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    """The shape says its nodes run el9; they run Debian. The demand counts the el9 tasks for
    the shape, its pilots find nothing they can take and leave: after three in a row the shape
    is held back (one pilot per wait), instead of being resubmitted every cycle."""
    config = dag_dataset(3)
    config["tasks"] = config["tasks"][:1]
    config["tasks"][0]["requirements"]["os"] = ["el9"]
    matchmaker.submit(config)
    site = make_runner(site_document(matchmaker, tmp_path / "factory", backoff="60s",
                                     shapes=[dict(SHAPE, os=["el9"])]))
    with caplog.at_level(logging.WARNING, logger="floe.factory.site"):
        cycle_until(site, lambda: "small" in site.holds.held, 90, "the shape to be held")
        held_at = site.counters.submitted
        for _ in range(6):
            site.cycle()
            time.sleep(0.5)
    assert site.counters.submitted == held_at <= 4 + 3  # max_total, then those that replaced
    hold = site.holds.held["small"]
    assert hold.kind == "empty" and hold.wait == 60
    assert re.match(r"[34] small pilots in a row ended without a task while 3 ready tasks that "
                    "the demand counts for the shape waited: the tasks may need what its "
                    "pilots do not offer", hold.why)
    assert ("3 small pilots in a row ended without a task while 3 ready tasks" in caplog.text
            and "No small pilot is submitted for 60 s, then one to try again" in caplog.text)
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["held_shapes"]["small"]["kind"] == "empty"


def test_pilots_ending_empty_on_a_black_hole_hold_the_shape_back_naming_the_host(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    """The site's node is kept out as a black hole (tasks of a dataset that runs elsewhere
    failed there one after another): its pilots get no work, and the hold says why, not that
    the tasks may need what the pilots do not offer."""
    matchmaker.submit(dag_dataset(12))
    ScriptedPilot(matchmaker, host="good-node").run_one()  # the dataset runs elsewhere
    broken = ScriptedPilot(matchmaker, host="bad-node")
    for _ in range(5):
        broken.run_one(exit_code=1, usage={"wall_time": 1.0})
    assert [hole["host"] for hole in matchmaker.get("/sites")["sites"][0]["black_holes"]] == [
        "bad-node"]
    site = make_runner(site_document(matchmaker, tmp_path / "factory", backoff="60s",
                                     environment={"FLOE_HOST": "bad-node"}))
    cycle_until(site, lambda: "small" in site.holds.held, 90, "the shape to be held")
    assert re.match(r"[34] small pilots in a row ended without a task while \d+ ready tasks "
                    "that the demand counts for the shape waited: the matchmaker gives no work "
                    "to bad-node \\(kept out as black holes for now", site.holds.held["small"].why)
