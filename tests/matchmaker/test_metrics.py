"""/metrics against a real matchmaker process: who may read it, a strict check of the
Prometheus text format, and for every metric a test that makes it move with real requests
(pilots scripted through pilot.client.Matchmaker)."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from matchmaker.api.metrics import Exposition, escape_label
from matchmaker.metrics import Histogram
from tests.pilot.live import LiveMatchmaker, wait_for
from tests.pilot.scripted import ScriptedPilot

CONFIG = {"jobs": 3, "tasks": [{"name": "count", "modules": [{"command": "echo counting"}]}]}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)?\}})? (\S+)")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


@dataclass
class Scrape:
    """A /metrics text, parsed strictly: it fails the test on anything Prometheus would refuse."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, frozenset], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        assert text.endswith("\n"), "the exposition must end with a newline"
        family = kind = None
        helped: set[str] = set()
        for line in text[:-1].split("\n"):
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                assert re.fullmatch(_NAME, name) and name not in helped, line
                assert help_text and "\n" not in help_text, line
                helped.add(name)
                family = name
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                assert name == family and name not in scrape.types, f"TYPE without HELP: {line}"
                assert kind in _SUFFIXES, line
                if kind == "counter":
                    assert name.endswith("_total"), line
                scrape.types[name] = kind
            else:
                match = _SAMPLE.fullmatch(line)
                assert match, f"not a sample line: {line!r}"
                name, labels, value = match.groups()
                assert family in scrape.types, f"a sample before its TYPE line: {line}"
                assert name in {family + s for s in _SUFFIXES[kind]}, (family, line)
                pairs = [(k, _unescape(v)) for k, v in _PAIR.findall(labels or "")]
                assert len({k for k, _ in pairs}) == len(pairs), f"repeated label: {line}"
                key = (name, frozenset(pairs))
                assert key not in scrape.samples, f"repeated series: {line}"
                scrape.samples[key] = float(value)
        scrape._check_histograms()
        return scrape

    def _check_histograms(self) -> None:
        for family, kind in self.types.items():
            if kind != "histogram":
                continue
            buckets: dict[frozenset, list[tuple[float, float]]] = {}
            for (name, labels), value in self.samples.items():
                if name == family + "_bucket":
                    le = dict(labels)["le"]
                    rest = frozenset(p for p in labels if p[0] != "le")
                    buckets.setdefault(rest, []).append((float(le), value))
            assert buckets, f"histogram {family} has no buckets"
            for labels, pairs in buckets.items():
                pairs.sort()
                assert pairs[-1][0] == math.inf, f'{family}{dict(labels)} lacks le="+Inf"'
                counts = [count for _, count in pairs]
                assert counts == sorted(counts), f"{family}{dict(labels)} is not cumulative"
                assert self.samples[family + "_count", labels] == counts[-1]
                assert (family + "_sum", labels) in self.samples

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def value(self, name: str, **labels: str) -> float:
        found = self.get(name, **labels)
        assert found is not None, f"no series {name}{labels}"
        return found


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


def scrape(matchmaker: LiveMatchmaker) -> Scrape:
    status, content_type, text = fetch(matchmaker, matchmaker.user_token)
    assert status == 200, text
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return Scrape.parse(text)


def test_metrics_are_read_with_a_users_token_and_refused_without_one(matchmaker):
    status, _, text = fetch(matchmaker, matchmaker.user_token)
    assert status == 200 and "# TYPE floe_tasks gauge" in text
    status, content_type, text = fetch(matchmaker, None)
    assert (status, content_type) == (401, "application/json"), text
    assert "this needs a token" in text
    for token, who in ((matchmaker.pilot_token(), "a pilot of site site-a"),
                       (matchmaker.site_token, "the factory of site site-a")):
        status, _, text = fetch(matchmaker, token)
        assert status == 403, text
        assert json.loads(text)["error"] == f"{who} may not read: that needs an admin or a user"


def test_the_exposition_is_valid_text_format_with_every_family_typed(matchmaker):
    ScriptedPilot(matchmaker).ask()
    parsed = scrape(matchmaker)
    assert parsed.types == {
        "floe_tasks": "gauge", "floe_matches_total": "counter",
        "floe_completions_total": "counter", "floe_failures_total": "counter",
        "floe_heartbeats_total": "counter", "floe_delivered_core_seconds_total": "counter",
        "floe_pilots": "gauge", "floe_idle_pilots": "gauge", "floe_empty_asks_total": "counter",
        "floe_empty_pilots_total": "counter", "floe_black_hole_hosts": "gauge",
        "floe_black_holes_found_total": "counter",
        "floe_request_duration_seconds": "histogram"}
    # Every error class has its series from the start, so rates work from the first scrape.
    for error in ("task_error", "resource_overuse", "pilot_lost", "staging_error", "reset"):
        assert parsed.value("floe_failures_total", error_class=error) == 0


def test_label_values_and_help_text_are_escaped():
    awkward = 'a "quoted" back\\slash\nand a newline'
    assert escape_label(awkward) == r'a \"quoted\" back\\slash\nand a newline'
    out = Exposition()
    out.family("floe_test_total", "counter", "Help with a \\ and a\nnewline.",
               [({"who": awkward}, 2)])
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.5, 7.0):
        histogram.observe(seconds)
    out.histogram("floe_test_seconds", "A histogram.", "route", {'/x"y': histogram})
    text = out.text()
    assert "# HELP floe_test_total Help with a \\\\ and a\\nnewline." in text
    parsed = Scrape.parse(text)
    assert parsed.value("floe_test_total", who=awkward) == 2
    assert [parsed.value("floe_test_seconds_bucket", route='/x"y', le=le)
            for le in ("0.1", "1.0", "+Inf")] == [1, 2, 3]
    assert parsed.value("floe_test_seconds_sum", route='/x"y') == pytest.approx(7.55)


def test_tasks_gauge_follows_each_owners_tasks_by_state(matchmaker):
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


def test_matches_completions_heartbeats_and_delivered_core_seconds_count_up(matchmaker):
    matchmaker.submit(CONFIG)
    before = scrape(matchmaker)
    assert before.value("floe_matches_total") == 0
    assert before.get("floe_delivered_core_seconds_total", user="alice") is None
    pilot = ScriptedPilot(matchmaker)
    attempt = pilot.take()
    pilot.heartbeat(attempt)
    pilot.heartbeat(attempt)
    pilot.report(attempt, usage={"wall_time": 12.0, "cpu_time": 11.0})
    pilot.run_one()
    after = scrape(matchmaker)
    assert after.value("floe_matches_total") == 2
    assert after.value("floe_completions_total") == 2
    assert after.value("floe_heartbeats_total") == 2
    assert after.value("floe_delivered_core_seconds_total", user="alice") >= 12.0


def test_failures_count_by_error_class(matchmaker):
    matchmaker.submit(CONFIG)
    pilot = ScriptedPilot(matchmaker)
    pilot.run_one(exit_code=3)
    pilot.run_one(exit_code=None, error_class="staging_error", error_message="no input")
    pilot.take()
    pilot.sign_off("killed")  # while it ran a task: that attempt is lost with the pilot
    parsed = scrape(matchmaker)
    assert parsed.value("floe_failures_total", error_class="task_error") == 1
    assert parsed.value("floe_failures_total", error_class="staging_error") == 1
    assert parsed.value("floe_failures_total", error_class="pilot_lost") == 1
    assert parsed.value("floe_failures_total", error_class="resource_overuse") == 0
    assert parsed.value("floe_completions_total") == 0


def test_pilots_gauge_counts_each_sites_pilots_by_state(matchmaker):
    assert scrape(matchmaker).get("floe_pilots", site="site-a", state="running") is None
    first, second = ScriptedPilot(matchmaker, "node1"), ScriptedPilot(matchmaker, "node2")
    assert scrape(matchmaker).value("floe_pilots", site="site-a", state="running") == 2
    first.sign_off()
    parsed = scrape(matchmaker)
    assert parsed.value("floe_pilots", site="site-a", state="running") == 1
    assert parsed.value("floe_pilots", site="site-a", state="exited") == 1
    second.sign_off()
    assert scrape(matchmaker).value("floe_pilots", site="site-a", state="exited") == 2


def test_empty_asks_idle_pilots_and_pilots_that_ended_empty(matchmaker):
    before = scrape(matchmaker)
    assert before.value("floe_idle_pilots", site="site-a") == 0
    assert before.value("floe_empty_asks_total") == 0
    assert before.get("floe_empty_pilots_total", site="site-a") is None
    empty, busy = ScriptedPilot(matchmaker, "node1"), ScriptedPilot(matchmaker, "node2")
    assert empty.ask() is None and empty.ask() is None
    during = scrape(matchmaker)
    assert during.value("floe_empty_asks_total") == 2
    assert during.value("floe_idle_pilots", site="site-a") == 1
    matchmaker.submit(dict(CONFIG, jobs=1))
    busy.run_one()
    empty.sign_off()
    busy.sign_off()  # it had a task, so it did not end empty
    after = scrape(matchmaker)
    assert after.value("floe_empty_pilots_total", site="site-a") == 1
    assert after.value("floe_idle_pilots", site="site-a") == 0


def test_request_latency_histograms_count_each_route(matchmaker):
    dataset = matchmaker.submit(dict(CONFIG, jobs=1))
    route = "/api/v1/datasets/{dataset_id}"
    before = scrape(matchmaker).get("floe_request_duration_seconds_count", route=route) or 0
    for _ in range(5):
        matchmaker.get(f"/datasets/{dataset}")
    parsed = scrape(matchmaker)
    assert parsed.value("floe_request_duration_seconds_count", route=route) == before + 5
    assert parsed.value("floe_request_duration_seconds_bucket", route=route, le="+Inf") == \
        before + 5
    assert parsed.value("floe_request_duration_seconds_sum", route=route) > 0
    # The scrapes themselves are timed too.
    assert parsed.value("floe_request_duration_seconds_count", route="/metrics") >= 1
