"""A site's health judged by whether its pilots registered with the matchmaker, with the local
plugin, a real matchmaker and real pilots: pilots that cannot reach the matchmaker are failures
however long they run, and the site is backed off; pilots that register and leave at once are
none; and where the matchmaker cannot say (it cannot store what it is told now, or it is away)
the pilots' life decides, as `min_pilot_life` says."""

from __future__ import annotations

import http.server
import json
import logging
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from floe.config.factory import factory_config
from tests.pilot.live import LiveMatchmaker, free_port, wait_for
from tests.plugins.pilots import fake_command

from .conftest import SHAPE, dag_dataset, site_document
from .test_site_local import cycle_until, live_pilots

# A worker node's "python" that runs the real pilot, pointed at a matchmaker where nothing
# listens (its last --matchmaker wins): it tries to register for its idle_timeout, then leaves.
NO_NETWORK_PYTHON = 'exec {python} "$@" --matchmaker http://127.0.0.1:{port}'
# A "python" that answers the launcher's version question as 3.11 would, but never starts a
# pilot: it leaves after `seconds`.
SLEEPING_PYTHON = 'case "$2" in *version_info*) echo 3.11; exit 0;; esac; sleep {seconds}'


def test_pilots_that_cannot_reach_the_matchmaker_fail_however_long_they_ran(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    dataset = matchmaker.submit(dag_dataset(4))
    python = fake_command(tmp_path / "bin", "python", NO_NETWORK_PYTHON.format(
        python=sys.executable, port=free_port())) / "python"
    document = site_document(matchmaker, tmp_path / "factory", python=str(python),
                             min_pilot_life="1s", failing_after=3, backoff="60s")
    site = make_runner(document)
    assert site.cycle().submit == {"small": 4}
    cycle_until(site, lambda: site.counters.ended == 4, 60, "the pilots to give up")
    assert site.counters.ended_unregistered == 4 and site.counters.died_at_start == 0
    lives = [int(found.group(1)) for record in caplog.records if (found := re.search(
        r"ended without registering with the matchmaker at \S+ \((\d+) s after it started\)",
        record.getMessage())) and record.levelname == "WARNING"]
    assert len(lives) == 4 and min(lives) >= 2   # longer than min_pilot_life: not the time rule
    assert site.health.failing and site.health.backing_off(time.time())
    again = site.cycle()
    assert again.submit == {"small": 0}
    assert any("backing off" in reason for reason in again.reasons)
    assert site.counters.submitted == 4
    assert "site site-a is failing" in caplog.text
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["health"]["failing"] is True
    assert status["counters"]["ended_unregistered"] == 4
    assert "its log ends: " in status["health"]["last_error"]
    assert "cannot reach the matchmaker at" in status["health"]["last_error"]
    assert matchmaker.get("/pilots?site=site-a")["pilots"] == []

    # The site admin fixes the nodes' network in the config: the wait ends at once, and the
    # pilots now submitted register and do the work.
    fixed = factory_config({**document, "sites": [dict(document["sites"][0],
                                                       python=sys.executable)]})
    caplog.set_level(logging.INFO, "floe.factory")
    site.reconfigure(fixed, fixed.sites[0], matchmaker.site_token)
    assert "its config changed; the failures before are forgotten" in caplog.text
    assert not site.health.failing and not site.health.backing_off(time.time())
    cycle_until(site, lambda: any(pilot.registered for pilot in site.pilots.values()), 60,
                "a pilot to register")
    assert any(pilot.registered for pilot in site.pilots.values())
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 120,
                "the work to be done")


def test_pilots_that_register_and_leave_at_once_for_want_of_work_are_no_failures(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path):
    # The shape says its nodes run "solaris", which they do not: the demand is real, but the
    # pilots find nothing they can take and leave after their idle_timeout, long before
    # min_pilot_life.
    dataset = dag_dataset(4)
    dataset["tasks"][0]["requirements"]["os"] = ["solaris"]
    matchmaker.submit(dataset)
    site = make_runner(site_document(matchmaker, tmp_path / "factory",
                                     shapes=[dict(SHAPE, os=["solaris"])],
                                     min_pilot_life="1h", failing_after=1))
    assert site.cycle().submit == {"small": 4}
    ours = sorted(site.pilots)
    # No cycle while they run: each registers and leaves between two cycles of the factory.
    wait_for(lambda: not live_pilots(site), 60, "the pilots to leave")
    pilots = matchmaker.get("/pilots?site=site-a")["pilots"]
    assert sorted(p["batch_id"] for p in pilots) == ours
    assert {p["batch_system"] for p in pilots} == {"local"}
    assert all(p["state"] == "exited" and p["attempts_run"] == 0 for p in pilots)
    assert all(not pilot.registered and pilot.started is None for pilot in site.pilots.values())
    site.cycle()
    assert site.pilots == {} and site.counters.ended == 4
    assert site.counters.ended_unregistered == 0 and site.counters.died_at_start == 0
    assert site.health.failures == 0 and not site.health.failing


class UnsureMatchmaker:
    """The live matchmaker behind a proxy that answers what a factory tells of its batch jobs
    503 (retryable: a matchmaker whose database writer just died). Everything else is passed
    through."""

    def __init__(self, upstream: str) -> None:
        self.refused = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.forward()

            def do_POST(self) -> None:
                self.forward()

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/batch-jobs"):
                    proxy.refused += 1
                    self.answer(503, json.dumps({"error": "the matchmaker could not store "
                                                 "this now; try again"}).encode())
                    return
                request = urllib.request.Request(
                    upstream + self.path, data=body or None, method=self.command,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("authorization", "content-type")})
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        self.answer(reply.status, reply.read())
                except urllib.error.HTTPError as err:
                    self.answer(err.code, err.read())

            def answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def unsure(matchmaker: LiveMatchmaker) -> Iterator[UnsureMatchmaker]:
    proxy = UnsureMatchmaker(matchmaker.url)
    yield proxy
    proxy.close()


@pytest.mark.parametrize("seconds, failures", [(0, 4), (3, 0)], ids=["die-at-once", "live-3s"])
def test_a_matchmaker_that_cannot_be_asked_about_registration_leaves_it_to_min_pilot_life(
        matchmaker: LiveMatchmaker, unsure: UnsureMatchmaker, make_runner, tmp_path: Path,
        seconds: int, failures: int):
    matchmaker.submit(dag_dataset(4))
    python = fake_command(tmp_path / "bin", "python",
                          SLEEPING_PYTHON.format(seconds=seconds)) / "python"
    document = dict(site_document(matchmaker, tmp_path / "factory", python=str(python),
                                  min_pilot_life="2s", failing_after=3, backoff="60s"),
                    matchmaker=unsure.url)
    site = make_runner(document)
    assert site.cycle().submit == {"small": 4}
    cycle_until(site, lambda: site.counters.ended == 4, 30, "the pilots to end")
    assert unsure.refused > 0                   # the factory asked, and could not be told
    assert site.counters.ended_unregistered == 0
    assert site.counters.died_at_start == failures
    assert site.health.failures == failures
    if failures:
        assert "ended 0 s after it started (min_pilot_life 2 s)" in site.health.last_error


def test_pilots_that_end_while_the_matchmaker_is_away_are_judged_by_their_life(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    matchmaker.submit(dag_dataset(4))
    python = fake_command(tmp_path / "bin", "python",
                          SLEEPING_PYTHON.format(seconds=2)) / "python"
    site = make_runner(site_document(matchmaker, tmp_path / "factory", python=str(python),
                                     min_pilot_life="30s", failing_after=3, backoff="60s"))
    assert site.cycle().submit == {"small": 4}
    matchmaker.stop()
    cycle_until(site, lambda: site.counters.ended == 4, 30, "the pilots to end")
    assert "cannot reach the matchmaker" in site.last["matchmaker_error"]
    assert site.counters.died_at_start == 4 and site.counters.ended_unregistered == 0
    assert site.health.failing
    # Said once, not at every cycle; status.json says since when.
    away = [r for r in caplog.records if "no demand" in r.getMessage()]
    assert len(away) == 1 and away[0].getMessage().endswith("; trying again each cycle")
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["matchmaker_away_since"] <= time.time()
    matchmaker.start()
    site.cycle()
    assert "site site-a: the matchmaker answers again, after " in caplog.text
    assert "matchmaker_away_since" not in site.last


def test_a_black_hole_host_is_reported_to_the_factory_and_its_pilots_prove_nothing(
        matchmaker: LiveMatchmaker, make_runner, tmp_path: Path, caplog):
    """A node that fails every task (`BROKEN`, named bad-node) after a good node proved the
    dataset: the matchmaker keeps it out at the fifth failure; the factory's next cycles say
    so (the local plugin cannot keep pilots off a host), keep it in status.json, and a pilot
    that registers there later is no proof that the site works."""
    caplog.set_level(logging.INFO, logger="floe.factory")
    dataset = matchmaker.submit({"jobs": 300, "max_retries": 5, "tasks": [{
        "name": "work", "requirements": {"walltime": "1m", "memory": "64MiB", "disk": "1MiB"},
        "modules": [{"command": ["sh", "-c", 'test -z "$BROKEN"']}]}]})
    (tmp_path / "good").mkdir()
    good = matchmaker.start_pilot(tmp_path / "good", "--idle-timeout", "1s",
                                  env={"FLOE_HOST": "good-node"}, log_name="good.log")
    wait_for(lambda: "complete" in matchmaker.states(dataset), 60, "a first task done")
    good.terminate()  # it drains: most tasks are left for the bad node
    good.wait(60)
    assert matchmaker.states(dataset).count("complete") < 290
    document = site_document(matchmaker, tmp_path / "factory", max_total=1, max_queued=1,
                             max_per_cycle=1,
                             environment={"FLOE_HOST": "bad-node", "BROKEN": "1"})
    site = make_runner(document)
    cycle_until(site, lambda: site.last.get("black_holes") == ["bad-node"], 120,
                "the factory to hear of the black hole")
    assert "the matchmaker gives bad-node no work (black holes); the local plugin cannot " \
           "keep new pilots off hosts" in caplog.text
    status = json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())
    assert status["black_holes"] == ["bad-node"]
    cycle_until(site, lambda: "registered on a black-hole host: no proof that the site works"
                in caplog.text, 120, "a pilot on the black hole to be judged")
    assert not site.health.failing
