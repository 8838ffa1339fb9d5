"""/metrics against a real matchmaker process: who may read it, the exposition as
`prometheus_client`'s parser (and `promtool check metrics`, where installed) reads it, and for
every metric a test that makes it move with real requests (pilots scripted through
pilot.client.Matchmaker); the 5xx class of the latency histogram on an in-process server."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from floe.matchmaker.api import meta
from floe.matchmaker.metrics import status_class
from floe.pilot.client import Matchmaker
from tests.pilot.live import LiveMatchmaker, wait_for
from tests.pilot.scripted import ScriptedPilot

CONFIG = {"jobs": 3, "tasks": [{"name": "count", "modules": [{"command": "echo counting"}]}]}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ERROR_CLASSES = ("task_error", "resource_overuse", "pilot_lost", "staging_error", "reset",
                 "not_run")


class Scrape:
    """A /metrics text as `prometheus_client`'s parser reads it: each family's type and help,
    and each sample's value by its name and labels."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.help: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset], float] = {}
        for family in text_string_to_metric_families(text):
            assert family.name not in self.types, f"family {family.name} twice"
            self.types[family.name] = family.type
            self.help[family.name] = family.documentation
            for sample in family.samples:
                key = sample.name, frozenset(sample.labels.items())
                assert key not in self.samples, f"repeated series: {sample}"
                self.samples[key] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert found is not None, f"no series {name}{labels}"
        return found

    def labels(self, name: str) -> list[dict[str, str]]:
        """The label sets of the series named `name`."""
        return [dict(labels) for sample, labels in self.samples if sample == name]


def fetch(matchmaker: LiveMatchmaker, token: str | None) -> tuple[int, str, str]:
    """GET /metrics: (status, content type, body)."""
    request = urllib.request.Request(matchmaker.url + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def text(matchmaker: LiveMatchmaker) -> str:
    status, content_type, body = fetch(matchmaker, matchmaker.user_token)
    assert status == 200, body
    assert content_type == CONTENT_TYPE
    return body


def scrape(matchmaker: LiveMatchmaker) -> Scrape:
    return Scrape(text(matchmaker))


class SiteBPilot(ScriptedPilot):
    """ScriptedPilot's steps for a pilot registered with a pilot token of site-b."""

    def __init__(self, url: str, token: str, host: str) -> None:
        self.client = Matchmaker(url, token)
        reply = self.client.register(host=host, batch_system="none", batch_id="",
                                     version="test", resources={})
        assert reply.status == 201, reply.data
        self.pilot_id = reply.data["pilot_id"]


class SiteB:
    """A second site, site-b, made while the server runs."""

    def __init__(self, matchmaker: LiveMatchmaker) -> None:
        self.matchmaker = matchmaker
        self.token = matchmaker._floe("site", "add", "site-b")["token"]

    def pilot(self, host: str = "node9") -> ScriptedPilot:
        return SiteBPilot(self.matchmaker.url, wait_for(self._pilot_token, 10,
                                                        "the server to know site-b"), host)

    def _pilot_token(self) -> str | None:
        """A pilot token of site-b; None until the server has read the new site (within its
        flush_interval)."""
        status, data = self.matchmaker.api("POST", "/sites/site-b/pilot-tokens",
                                           {"lifetime": 3600}, token=self.token)
        return data["tokens"][0] if status == 201 else None


@pytest.fixture
def site_b(matchmaker: LiveMatchmaker) -> SiteB:
    return SiteB(matchmaker)


def test_metrics_are_read_with_a_users_token_and_refused_without_one(matchmaker):
    status, _, body = fetch(matchmaker, matchmaker.user_token)
    assert status == 200 and "# TYPE floe_tasks gauge" in body
    status, content_type, body = fetch(matchmaker, None)
    assert (status, content_type) == (401, "application/json"), body
    assert "this needs a token" in body
    for token, who in ((matchmaker.pilot_token(), "a pilot of site site-a"),
                       (matchmaker.site_token, "the factory of site site-a")):
        status, _, body = fetch(matchmaker, token)
        assert status == 403, body
        assert json.loads(body)["error"] == f"{who} may not read: that needs an admin or a user"


def test_every_family_is_typed_and_documented_with_every_sites_series_from_the_start(
        matchmaker):
    ScriptedPilot(matchmaker).ask()
    parsed = scrape(matchmaker)
    floe = {name: kind for name, kind in parsed.types.items() if name.startswith("floe_")}
    assert floe == {
        "floe_build_info": "gauge", "floe_tasks": "gauge", "floe_matches": "counter",
        "floe_completions": "counter", "floe_failures": "counter", "floe_heartbeats": "counter",
        "floe_empty_asks": "counter", "floe_empty_pilots": "counter",
        "floe_pilots_ended": "counter", "floe_delivered_core_seconds": "counter",
        "floe_pilots": "gauge", "floe_idle_pilots": "gauge", "floe_black_hole_hosts": "gauge",
        "floe_black_holes_found": "counter", "floe_request_duration_seconds": "histogram"}
    for family in ("process_cpu_seconds", "process_resident_memory_bytes",
                   "process_start_time_seconds", "process_open_fds", "python_gc_collections",
                   "python_gc_objects_collected", "python_info"):
        assert family in parsed.types, family
    assert all(parsed.help.values()), [name for name, text in parsed.help.items() if not text]
    # Every counter of a site has its series from the first scrape, so rates work at once.
    for name in ("floe_matches_total", "floe_completions_total", "floe_heartbeats_total",
                 "floe_empty_pilots_total"):
        assert parsed.value(name, site="site-a") == 0, name
    for error in ERROR_CLASSES:
        assert parsed.value("floe_failures_total", site="site-a", error_class=error) == 0
    for state in ("exited", "lost"):
        assert parsed.value("floe_pilots_ended_total", site="site-a", state=state) == 0
    assert parsed.value("floe_black_hole_hosts", site="site-a") == 0


def _promtool() -> str | None:
    """Debian's promtool: on the PATH, or where scripts/setup-venv.sh puts it."""
    beside = Path(sys.executable).parent / "promtool"
    return str(beside) if beside.exists() else shutil.which("promtool")


@pytest.mark.skipif(_promtool() is None, reason="promtool is not installed (Debian's "
                    "prometheus package; scripts/setup-venv.sh takes it from there)")
def test_promtool_finds_no_problem_in_the_exposition(matchmaker):
    matchmaker.submit(CONFIG)
    pilot = ScriptedPilot(matchmaker)
    pilot.run_one()
    pilot.run_one(exit_code=2)
    body = text(matchmaker)
    checked = subprocess.run([_promtool(), "check", "metrics"], input=body, text=True,
                             capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not checked.stdout.strip() and not checked.stderr.strip(), \
        checked.stdout + checked.stderr


def test_build_info_names_the_floe_and_python_versions(matchmaker):
    parsed = scrape(matchmaker)
    build = {"version": metadata.version("floe"), "python": platform.python_version()}
    assert parsed.labels("floe_build_info") == [build]
    assert parsed.value("floe_build_info", **build) == 1


def test_process_and_gc_figures_are_the_servers_own(matchmaker):
    server = psutil.Process(matchmaker.process.pid)
    first = scrape(matchmaker)
    assert first.value("process_start_time_seconds") == pytest.approx(server.create_time(),
                                                                     abs=1)
    assert first.value("process_open_fds") == pytest.approx(server.num_fds(), abs=5)
    assert first.value("process_resident_memory_bytes") == pytest.approx(
        server.memory_info().rss, rel=0.2)
    version = platform.python_version_tuple()
    assert first.value("python_info", implementation=platform.python_implementation(),
                       major=version[0], minor=version[1], patchlevel=version[2],
                       version=platform.python_version()) == 1
    # The server collects everything once its state is loaded, freezes it, and from then on
    # collects on a timer only (matchmaker.collecting): a body of 60,000 lists, which this
    # process's own collector would have answered with collections, starts none there.
    assert first.value("python_gc_collections_total", generation="2") >= 1
    status, _ = matchmaker.api("POST", "/datasets", {"jobs": 1, "tasks": [[]] * 60_000})
    assert status == 400
    later = wait_for(lambda: (s := scrape(matchmaker)).value("process_cpu_seconds_total")
                     > first.value("process_cpu_seconds_total") and s, 10,
                     "the server to spend CPU time")
    for generation in "012":
        assert later.value("python_gc_collections_total", generation=generation) == \
            first.value("python_gc_collections_total", generation=generation)


def test_tasks_gauge_counts_the_tasks_of_datasets_that_have_not_ended(matchmaker):
    matchmaker.submit(CONFIG)
    bob = matchmaker._floe("user", "add", "bob")["token"]
    status, data = matchmaker.api("POST", "/datasets", dict(CONFIG, jobs=2), token=bob)
    assert status == 201, data
    wait_for(lambda: scrape(matchmaker).get("floe_tasks", user="bob", state="ready") == 2,
             10, "bob's jobs to be created")
    before = scrape(matchmaker)
    assert before.value("floe_tasks", user="alice", state="ready") == 3
    assert before.value("floe_tasks", user="alice", state="complete") == 0
    pilot = ScriptedPilot(matchmaker)
    attempt = pilot.take()
    during = scrape(matchmaker)
    assert during.value("floe_tasks", user="alice", state="ready") + \
        during.value("floe_tasks", user="bob", state="ready") == 4
    assert during.value("floe_tasks", user="alice", state="processing") + \
        during.value("floe_tasks", user="bob", state="processing") == 1
    pilot.report(attempt)
    after = scrape(matchmaker)
    assert after.value("floe_tasks", user="alice", state="complete") + \
        after.value("floe_tasks", user="bob", state="complete") == 1
    for _ in range(4):
        pilot.run_one()
    # Both datasets have ended: the gauge says what is left to do now, which is nothing.
    assert scrape(matchmaker).labels("floe_tasks") == []


def test_matches_completions_heartbeats_and_delivered_core_seconds_count_by_site(matchmaker,
                                                                                 site_b):
    matchmaker.submit(CONFIG)
    before = scrape(matchmaker)
    assert before.value("floe_matches_total", site="site-a") == 0
    assert before.get("floe_delivered_core_seconds_total", user="alice") is None
    pilot = ScriptedPilot(matchmaker)
    attempt = pilot.take()
    pilot.heartbeat(attempt)
    pilot.heartbeat(attempt)
    pilot.report(attempt, usage={"wall_time": 12.0, "cpu_time": 11.0})
    pilot.run_one()
    elsewhere = site_b.pilot()
    attempt = elsewhere.take()
    elsewhere.heartbeat(attempt)
    elsewhere.report(attempt)
    after = scrape(matchmaker)
    assert after.value("floe_matches_total", site="site-a") == 2
    assert after.value("floe_matches_total", site="site-b") == 1
    assert after.value("floe_completions_total", site="site-a") == 2
    assert after.value("floe_completions_total", site="site-b") == 1
    assert after.value("floe_heartbeats_total", site="site-a") == 2
    assert after.value("floe_heartbeats_total", site="site-b") == 1
    assert after.value("floe_delivered_core_seconds_total", user="alice") >= 12.0


def test_failures_count_by_site_and_error_class(matchmaker, site_b):
    matchmaker.submit(dict(CONFIG, jobs=4))
    pilot = ScriptedPilot(matchmaker)
    pilot.run_one(exit_code=3)
    pilot.run_one(exit_code=None, error_class="staging_error", error_message="no input")
    pilot.take()
    pilot.sign_off("killed")  # while it ran a task: that attempt is lost with the pilot
    site_b.pilot().run_one(exit_code=None, error_class="resource_overuse",
                           error_message="memory")
    parsed = scrape(matchmaker)
    counted = {(labels["site"], labels["error_class"]): parsed.value("floe_failures_total",
                                                                     **labels)
               for labels in parsed.labels("floe_failures_total")}
    assert {key: n for key, n in counted.items() if n} == {
        ("site-a", "task_error"): 1, ("site-a", "staging_error"): 1,
        ("site-a", "pilot_lost"): 1, ("site-b", "resource_overuse"): 1}
    assert len(counted) == 2 * len(ERROR_CLASSES)  # the zeros are there too
    assert parsed.value("floe_completions_total", site="site-a") == 0


def test_pilot_gauges_count_live_pilots_and_ended_ones_are_counted_by_how(matchmaker):
    def pilots(state: str) -> float:
        return scrape(matchmaker).value("floe_pilots", site="site-a", state=state)

    assert (pilots("busy"), pilots("idle")) == (0, 0)
    matchmaker.submit(dict(CONFIG, jobs=1))
    first, second = ScriptedPilot(matchmaker, "node1"), ScriptedPilot(matchmaker, "node2")
    assert (pilots("busy"), pilots("idle")) == (0, 2)
    attempt = first.take()
    assert (pilots("busy"), pilots("idle")) == (1, 1)
    first.report(attempt)
    first.sign_off()
    parsed = scrape(matchmaker)
    assert parsed.value("floe_pilots", site="site-a", state="busy") == 0
    assert parsed.value("floe_pilots", site="site-a", state="idle") == 1
    assert parsed.value("floe_pilots_ended_total", site="site-a", state="exited") == 1
    second.sign_off()
    parsed = scrape(matchmaker)
    assert parsed.value("floe_pilots", site="site-a", state="idle") == 0
    assert parsed.value("floe_pilots_ended_total", site="site-a", state="exited") == 2
    assert parsed.value("floe_pilots_ended_total", site="site-a", state="lost") == 0


def test_a_pilot_whose_batch_job_ended_is_counted_lost(matchmaker):
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    reply = client.register(host="node1", batch_system="slurm", batch_id="42", version="test",
                            resources={})
    assert reply.status == 201, reply.data
    pilot_id = reply.data["pilot_id"]
    assert scrape(matchmaker).value("floe_pilots", site="site-a", state="idle") == 1
    status, answer = matchmaker.api("POST", "/sites/site-a/batch-jobs",
                                    {"batch_system": "slurm", "ended": ["42"]},
                                    token=matchmaker.site_token)
    assert status == 200 and answer["lost"] == ["42"], answer
    parsed = scrape(matchmaker)
    assert parsed.value("floe_pilots_ended_total", site="site-a", state="lost") == 1
    assert parsed.value("floe_pilots", site="site-a", state="idle") == 0
    assert matchmaker.pilot_record(pilot_id)["state"] == "lost"


def test_empty_asks_idle_pilots_and_pilots_that_ended_empty(matchmaker, site_b):
    before = scrape(matchmaker)
    assert before.value("floe_idle_pilots", site="site-a") == 0
    assert before.value("floe_empty_asks_total", site="site-a") == 0
    assert before.value("floe_empty_pilots_total", site="site-a") == 0
    empty, busy = ScriptedPilot(matchmaker, "node1"), ScriptedPilot(matchmaker, "node2")
    assert empty.ask() is None and empty.ask() is None
    assert site_b.pilot().ask() is None
    during = scrape(matchmaker)
    assert during.value("floe_empty_asks_total", site="site-a") == 2
    assert during.value("floe_empty_asks_total", site="site-b") == 1
    assert during.value("floe_idle_pilots", site="site-a") == 1
    matchmaker.submit(dict(CONFIG, jobs=1))
    busy.run_one()
    empty.sign_off()
    busy.sign_off()  # it had a task, so it did not end empty
    after = scrape(matchmaker)
    assert after.value("floe_empty_pilots_total", site="site-a") == 1
    assert after.value("floe_idle_pilots", site="site-a") == 0


def test_request_latency_is_counted_by_route_method_and_status_class(matchmaker):
    dataset = matchmaker.submit(dict(CONFIG, jobs=1))
    route = "/api/v1/datasets/{dataset_id}"

    def count(parsed: Scrape, route: str, method: str, status: str) -> float:
        return parsed.get("floe_request_duration_seconds_count", route=route, method=method,
                          status_class=status) or 0

    before = scrape(matchmaker)
    for _ in range(5):
        matchmaker.get(f"/datasets/{dataset}")
    assert matchmaker.api("GET", f"/datasets/{dataset + 1}")[0] == 404
    assert matchmaker.api("POST", "/datasets", {"jobs": 1})[0] == 400
    parsed = scrape(matchmaker)
    assert count(parsed, route, "GET", "2xx") == count(before, route, "GET", "2xx") + 5
    assert parsed.value("floe_request_duration_seconds_bucket", route=route, method="GET",
                        status_class="2xx", le="+Inf") == count(parsed, route, "GET", "2xx")
    assert parsed.value("floe_request_duration_seconds_sum", route=route, method="GET",
                        status_class="2xx") > 0
    assert count(parsed, route, "GET", "4xx") == count(before, route, "GET", "4xx") + 1
    assert count(parsed, "/api/v1/datasets", "POST", "4xx") == \
        count(before, "/api/v1/datasets", "POST", "4xx") + 1
    # The scrapes themselves are timed too.
    assert count(parsed, "/metrics", "GET", "2xx") >= 1


def test_status_classes():
    assert [status_class(s) for s in (200, 201, 302, 404, 409, 500, 503)] == \
        ["2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx"]


async def test_an_unhandled_error_is_timed_as_5xx(world, monkeypatch):
    def broken() -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(meta, "version", broken)
    status, _ = await world.api.call("GET", "/api/v1/health")
    assert status == 500
    monkeypatch.undo()
    status, body = await world.api.call("GET", "/metrics", world.owner)
    assert status == 200, body
    assert Scrape(body).value("floe_request_duration_seconds_count", route="/api/v1/health",
                              method="GET", status_class="5xx") == 1
