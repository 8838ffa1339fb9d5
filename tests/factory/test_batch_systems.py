"""End to end through real batch systems: the matchmaker on loopback, 100 tasks in DAG jobs, a
real `floe factory` submitting pilots through SLURM, SGE or PBS-style commands, the pilots pulling
and finishing every task and leaving, and no batch job of the factory left behind. Also, on
SLURM (whose queue can be made to hold pilots): queued pilots removed once their demand goes,
held pilots removed, refused submissions backed off, and two factories sharing the demand."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from floe.cli.main import main as floe
from floe.factory.site import plugin_factory_id
from floe.plugins import PilotState
from tests.pilot.live import LiveMatchmaker, wait_for

from .conftest import dag_dataset, record_path, site_document, write_toml

SYSTEMS = [
    pytest.param("slurm", id="slurm", marks=pytest.mark.slurm),
    pytest.param("sge", id="sge", marks=pytest.mark.sge),
    pytest.param("pbs", id="pbs", marks=pytest.mark.slurm),
]


def batch_site(request: pytest.FixtureRequest, system: str) -> dict[str, Any]:
    """The site settings that point the plugin at the real batch system."""
    if system == "slurm":
        request.getfixturevalue("slurm_cluster")
        return {"plugin": "slurm"}
    if system == "sge":
        request.getfixturevalue("sge_cluster")
        return {"plugin": "sge"}
    commands = request.getfixturevalue("pbs_commands")
    return {"plugin": "pbs", "commands_dir": str(commands), "options": {"flavour": "torque"}}


def status_file(workdir: Path) -> dict[str, Any]:
    path = workdir / "site-a" / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_a_factory_runs_100_dag_tasks_through_the_batch_system_and_leaves_nothing(
        system: str, request, matchmaker: LiveMatchmaker, make_runner, tmp_path: Path,
        start_factory):
    site = batch_site(request, system)
    workdir = tmp_path / "factory"
    # The nodes read the factory's workdir: the jobs start its pilot.pyz and carry none.
    document = site_document(matchmaker, workdir, **site, max_queued=3, max_total=3,
                             idle_timeout="4s", cycle="2s", shared_filesystem=True)
    config = write_toml(tmp_path / "site.toml", document)
    dataset = matchmaker.submit(dag_dataset(50))
    factory = start_factory(config, matchmaker.site_token)

    try:
        wait_for(lambda: set(matchmaker.states(dataset)) == {"complete"}, 300,
                 f"every task to complete through {system}")
        # With the work gone the pilots leave by themselves, and the factory sees them end.
        wait_for(lambda: status_file(workdir).get("tracked") == 0, 120, "the pilots to leave")
    except AssertionError:
        failed = [t for t in matchmaker.tasks(dataset) if t["state"] != "complete"][:3]
        raise AssertionError(f"factory log:\n{factory.text()[-2000:]}\nunfinished: "
                             f"{failed}") from None
    submitted = status_file(workdir)["counters"]["submitted"]
    record_path(f"{system}-shared-filesystem", status_file(workdir), matchmaker, dataset)
    time.sleep(5)
    assert status_file(workdir)["counters"]["submitted"] == submitted  # none after the work
    assert factory.stop() == 0

    pilots = matchmaker.get("/pilots?site=site-a&limit=1000")["pilots"]
    assert 1 <= len(pilots) == submitted
    assert all(p["state"] == "exited" for p in pilots)
    # Each pilot registers as the factory knows it (over Slurm's PBS wrappers, a SLURM job that
    # the pbs plugin submitted), by the ids the factory tracks: every one was seen to register.
    assert {p["batch_system"] for p in pilots} == {system}
    assert status_file(workdir)["counters"]["ended_unregistered"] == 0
    attempts = matchmaker.attempts(dataset)
    assert len(attempts) == 100 and all(a["exit_code"] == 0 for a in attempts)
    assert {a["batch_id"] for a in attempts} <= {p["batch_id"] for p in pilots}
    plugin = make_runner(document).plugin
    assert plugin.settings.factory_id == plugin_factory_id(document["factory_id"], "site-a")
    left = {i: p for i, p in plugin.status().items() if p.state is not PilotState.FINISHED}
    assert left == {}


def held_slurm_shape() -> dict[str, Any]:
    """A shape whose pilots SLURM keeps queued (they may only begin in an hour)."""
    return {"name": "later", "cpus": 1, "memory": "256MiB", "disk": "1GiB", "walltime": "20m",
            "directives": ["--begin=now+3600"]}


def slurm_state(batch_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", batch_id, "-o", "%T %r"], capture_output=True,
                          text=True, check=False).stdout.strip()


@pytest.mark.slurm
def test_queued_pilots_are_removed_once_their_demand_is_gone(
        slurm_cluster, matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    dataset = matchmaker.submit(dag_dataset(3))
    site = make_runner(site_document(
        matchmaker, tmp_path / "factory", plugin="slurm", shapes=[held_slurm_shape()],
        removal_grace="3s"))
    assert site.cycle().submit == {"later": 3}
    queued = sorted(site.pilots)
    assert all(slurm_state(b).startswith("PENDING") for b in queued)
    assert site.cycle().submit == {"later": 0}          # the queued pilots cover it
    status, _ = matchmaker.api("POST", f"/datasets/{dataset}/suspend")
    assert status == 200
    site.cycle()
    assert sorted(site.pilots) == queued                # within the grace period
    time.sleep(3.5)
    decision = site.cycle()
    assert decision.remove == {"later": 3}
    wait_for(lambda: not any(slurm_state(b).startswith("PENDING") for b in queued), 30,
             "SLURM to drop the removed pilots")
    assert site.pilots == {} and site.counters.removed == 3


@pytest.mark.slurm
def test_a_held_pilot_is_removed_and_counts_against_the_site(
        slurm_cluster, matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    matchmaker.submit(dag_dataset(1))
    site = make_runner(site_document(
        matchmaker, tmp_path / "factory", plugin="slurm", shapes=[held_slurm_shape()],
        backoff="60s"))
    site.cycle()
    [pilot] = site.pilots
    subprocess.run(["scontrol", "hold", pilot], check=True)
    wait_for(lambda: "JobHeld" in slurm_state(pilot), 10, "SLURM to hold the pilot")
    decision = site.cycle()
    assert site.counters.held == 1 and pilot not in site.pilots
    assert decision.submit == {"later": 0}              # backing off
    assert site.health.failures == 1 and "is held" in site.health.last_error
    wait_for(lambda: not slurm_state(pilot).startswith("PENDING"), 30, "the removal")


@pytest.mark.slurm
def test_a_refused_submission_is_reported_with_its_command_and_backed_off(
        slurm_cluster, matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    matchmaker.submit(dag_dataset(2))
    site = make_runner(site_document(
        matchmaker, tmp_path / "factory", plugin="slurm", backoff="60s",
        options={"partition": f"nosuch{secrets.token_hex(2)}"}))
    first = site.cycle()
    assert first.submit == {"small": 2} and site.counters.submit_failures == 1
    assert "sbatch failed" in site.health.last_error
    assert "invalid partition" in site.health.last_error.lower()
    assert "submitting 2 small pilots failed" in caplog.text
    again = site.cycle()
    assert again.submit == {"small": 0} and site.counters.submit_failures == 1
    assert site.pilots == {}
    # The refused script, with the unused token in it, is not kept.
    assert not list((tmp_path / "factory" / "site-a" / "scripts").glob("*.sh"))


@pytest.mark.slurm
def test_floe_factory_once_exits_1_when_a_submission_is_refused(
        slurm_cluster, matchmaker: LiveMatchmaker, tmp_path: Path, capsys, monkeypatch):
    matchmaker.submit(dag_dataset(1))
    config = write_toml(tmp_path / "site.toml", site_document(
        matchmaker, tmp_path / "factory", plugin="slurm",
        options={"partition": f"nosuch{secrets.token_hex(2)}"}))
    monkeypatch.setenv("FLOE_SITE_TOKEN", matchmaker.site_token)
    assert floe(["factory", "--config", str(config), "--once"]) == 1
    said = capsys.readouterr()
    assert json.loads(said.out)["counters"]["submit_failures"] == 1
    assert "floe factory: site site-a failed in this cycle: submitting 1 small pilot failed: " \
        in said.err
    assert "invalid partition" in said.err.lower()


@pytest.mark.slurm
def test_two_factories_serving_one_matchmaker_do_not_double_count_demand(
        slurm_cluster, matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    matchmaker.submit(dag_dataset(4))                        # 4 ready tasks
    sites = [make_runner(site_document(
        matchmaker, tmp_path / name, plugin="slurm", shapes=[held_slurm_shape()],
        max_queued=10, max_total=10, max_per_cycle=10)) for name in ("one", "two")]
    for _ in range(3):
        for site in sites:
            site.cycle()
    counts = [len(site.pilots) for site in sites]
    assert counts == [4, 0]
