"""A factory that reaches its cluster only over ssh: the real OpenSSH server of
scripts/net/login-node.sh, its second account as the collaboration's account at the site, and
the real SLURM and SGE of scripts/batch/. The factory runs as this machine's root in a private
workdir that the cluster account cannot read (no shared filesystem); its pilots run as the
cluster account and carry everything they need in their job scripts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from floe.config.factory import factory_config
from floe.factory.site import SiteRunner
from tests.conftest import LoginNode
from tests.pilot.live import ROOT, LiveMatchmaker

from .conftest import dag_dataset, record_path, site_document, write_toml
from .test_site_local import cycle_until

# The cluster account's sbatch, slowed so that a dropped connection can land in the middle of
# a submission (the real sbatch does the work).
SLOW_SBATCH = '#!/bin/sh\nsleep 2\nexec sbatch "$@"\n'


def ssh_site(login_node: LoginNode, plugin: str, **more: Any) -> dict[str, Any]:
    return {"plugin": plugin, "ssh": login_node.ssh(), "python": "", **more}


def our_jobs(login_node: LoginNode, site: SiteRunner) -> set[str]:
    """Every SLURM job of this factory the cluster still lists, ended ones included."""
    listing = login_node.as_account("squeue", "--noheader", "--states=all", "--format=%i %j")
    return {line.split()[0] for line in listing.stdout.splitlines()
            if line.split()[1].startswith(site.plugin.tag_prefix)}


@pytest.mark.slow
@pytest.mark.parametrize("system", [pytest.param("slurm", marks=pytest.mark.slurm),
                                    pytest.param("sge", marks=pytest.mark.sge)])
def test_a_factory_submits_over_ssh_and_its_pilots_need_nothing_of_its_workdir(
        system: str, request: pytest.FixtureRequest, login_node: LoginNode,
        matchmaker: LiveMatchmaker, make_runner: Any, tmp_path: Path) -> None:
    request.getfixturevalue(f"{system}_cluster")
    workdir = tmp_path / "factory"
    site = make_runner(site_document(matchmaker, workdir, **ssh_site(login_node, system),
                                     max_queued=2, max_total=2, max_per_cycle=2))
    dataset = matchmaker.submit(dag_dataset(4))
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 240,
                f"every task to complete through {system} over ssh")
    cycle_until(site, lambda: not site.pilots, 120, "the pilots to leave")

    record_path(f"{system}-over-ssh", site.status(site.clock()), matchmaker, dataset)
    denied = login_node.as_account("ls", str(workdir))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert oct(workdir.stat().st_mode & 0o777) == "0o700"
    pilots = matchmaker.get("/pilots?site=site-a&limit=100")["pilots"]
    assert len(pilots) == site.counters.submitted >= 1
    assert {p["batch_system"] for p in pilots} == {system}
    assert site.counters.orphans_removed == 0 and site.counters.ended_unregistered == 0
    remote = site.plugin.host.workdir()
    assert login_node.as_account("ls", f"{remote}/scripts").stdout == ""  # tokens gone
    assert login_node.as_account("ls", f"{remote}/submits").stdout == ""


@pytest.mark.slow
@pytest.mark.slurm
def test_dropped_connections_lose_no_pilot_and_submit_none_twice(
        slurm_cluster: None, login_node: LoginNode, matchmaker: LiveMatchmaker,
        make_runner: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "floe.factory")
    slow = f"/home/{login_node.account}/slow-sbatch"
    login_node.as_account("sh", "-c", f"mkdir -p {slow} && printf '%s' '{SLOW_SBATCH}' > "
                                      f"{slow}/sbatch && chmod +x {slow}/sbatch && ln -sf "
                                      f"/usr/bin/squeue /usr/bin/scancel {slow}/")
    site = make_runner(site_document(matchmaker, tmp_path / "factory",
                                     **ssh_site(login_node, "slurm", commands_dir=slow),
                                     max_queued=3, max_total=3, max_per_cycle=3))
    drops = SubmissionCutter(login_node, site, times=2)
    # Tasks that keep three pilots busy, so that the factory submits in several cycles.
    dataset = matchmaker.submit({"description": "ssh drops", "jobs": 6, "tasks": [{
        "name": "wait", "requirements": {"cpus": 1, "memory": "64MB", "disk": "1MB",
                                         "walltime": "2m"},
        "modules": [{"command": "sleep 6"}]}]})
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 300,
                "every task to complete while connections drop")
    cycle_until(site, lambda: not site.pilots, 120, "the pilots to leave")
    drops.join(10)
    record_path("slurm-over-ssh-with-dropped-connections", site.status(site.clock()),
                matchmaker, dataset)

    assert drops.cut == 2, "the connection was not cut during submissions"
    assert caplog.text.count("was submitted before the connection dropped; tracking it") == 2
    jobs = our_jobs(login_node, site)
    registered = {p["batch_id"] for p in
                  matchmaker.get("/pilots?site=site-a&limit=100")["pilots"]}
    assert jobs == registered                      # every job was a pilot that registered
    assert len(jobs) == site.counters.submitted    # each counted once: none submitted twice
    assert site.counters.orphans_removed == 0      # none lost track of
    assert not site.plugin.doubts


class SubmissionCutter(threading.Thread):
    """Drops every connection to the login node, `times` times, each time a submission is
    under way there (its record directory exists), a second into it."""

    def __init__(self, login_node: LoginNode, site: SiteRunner, times: int) -> None:
        super().__init__(daemon=True)
        self.login_node, self.site, self.times, self.cut = login_node, site, times, 0
        self.start()

    def run(self) -> None:
        submits = f"{self.site.plugin.host.workdir()}/submits"
        seen: set[str] = set()
        for _ in range(1500):
            listing = self.login_node.as_account("ls", submits).stdout.split()
            fresh = [name for name in listing if name not in seen]
            if fresh:
                seen.update(fresh)
                threading.Event().wait(1.0)
                self.login_node.drop()
                self.cut += 1
                if self.cut == self.times:
                    return
            threading.Event().wait(0.2)


def test_an_unreachable_login_node_is_backed_off_and_check_says_what_failed(
        login_node: LoginNode, matchmaker: LiveMatchmaker, make_runner: Any,
        tmp_path: Path) -> None:
    document = site_document(matchmaker, tmp_path / "factory",
                             **ssh_site(login_node, "slurm"), failing_after=1)
    document["sites"][0]["ssh"]["port"] = 1  # nothing listens there: the node is down
    site = make_runner(document)
    dataset = matchmaker.submit(dag_dataset(1))
    for _ in range(3):
        assert site.cycle() is None
    record_path("ssh-down", site.status(site.clock()), matchmaker, dataset)
    status = site.status(site.clock())
    assert status["health"]["failing"] and site.health.backing_off(site.clock())
    # Each cycle's query failed again while the site waited: counted, the wait not lengthened.
    assert site.health.failures == 3 and status["health"]["backoff_left"] <= 30
    assert status["health"]["last_error"].startswith(
        f"cannot query the batch system: cannot reach {login_node.account}@127.0.0.1 (port 1) "
        "over ssh")
    assert "Connection refused" in status["health"]["last_error"]

    config = write_toml(tmp_path / "site.toml", document)
    checked = subprocess.run([sys.executable, "-m", "floe.cli.main", "factory", "--config",
                              str(config), "--check"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=check_env(matchmaker))
    assert checked.returncode == 1
    assert f"site site-a: cannot reach {login_node.account}@127.0.0.1 (port 1) over ssh: " \
           "check that the login node is up" in checked.stderr
    document["sites"][0]["ssh"]["port"] = login_node.port
    write_toml(config, document)
    checked = subprocess.run([sys.executable, "-m", "floe.cli.main", "factory", "--config",
                              str(config), "--check"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=check_env(matchmaker))
    assert checked.returncode == 0, checked.stderr
    assert f"site site-a: ssh to {login_node.account}@127.0.0.1 (port {login_node.port}) " \
           "works" in checked.stdout
    assert "site site-a: slurm answers on" in checked.stdout

    # The running factory takes the fixed config: the wait is forgotten, the site tried now.
    fixed = factory_config(document)
    site.reconfigure(fixed, fixed.sites[0], site.token)
    assert not site.health.backing_off(site.clock()) and site.cycle() is not None
    assert site.plugin.host.control_path.exists()  # its connection, open

    # `--once` (the same settings, so the same connection) leaves no connection open.
    once = subprocess.run([sys.executable, "-m", "floe.cli.main", "factory", "--config",
                           str(config), "--once"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=check_env(matchmaker))
    assert once.returncode == 0, once.stderr
    assert not site.plugin.host.control_path.exists()

    # A new key is tried by a login of its own, not on the connection the factory holds open.
    stranger = tmp_path / "stranger_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    document["sites"][0]["ssh"]["identity"] = str(stranger)
    write_toml(config, document)
    checked = subprocess.run([sys.executable, "-m", "floe.cli.main", "factory", "--config",
                              str(config), "--check"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env=check_env(matchmaker))
    assert checked.returncode == 1
    assert "Permission denied" in checked.stderr and "floe factory --check" not in checked.stderr


def check_env(matchmaker: LiveMatchmaker) -> dict[str, str]:
    return {**os.environ, "FLOE_SITE_TOKEN": matchmaker.site_token}


def test_status_json_names_the_login_node(login_node: LoginNode, matchmaker: LiveMatchmaker,
                                          make_runner: Any, tmp_path: Path) -> None:
    site = make_runner(site_document(matchmaker, tmp_path / "factory",
                                     **ssh_site(login_node, "slurm")))
    assert json.loads(json.dumps(site.status(site.clock())))["ssh"] == \
        f"{login_node.account}@127.0.0.1 (port {login_node.port})"
