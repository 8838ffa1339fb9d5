"""The dataset page as a report: a 20-job campaign run on a fake clock by four pilots at two
sites over two hours, one host of which fills its scratch disk, read over HTTP and in a real
headless chromium at desktop and phone widths. It opens with the progress over time and an
estimate, groups errors by what stderr said, counts failures by site and host, draws runtime and
memory histograms against what was asked, and keeps every column of its tables on a phone.

Screenshots go to test-artifacts/web/: the whole page (dataset-report.png and -phone.png), its
opening (dataset-report-top.png and -top-phone.png, which docs/screenshots/ keeps as dataset.png
and dataset-phone.png) and the pilots page on a phone (pilots-report-phone.png)."""

from __future__ import annotations

import asyncio
import heapq
import html
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from floe.config.resources import GIB, MIB
from floe.config.settings import server_settings
from floe.matchmaker.api.framework import AUTH, ENGINE
from floe.matchmaker.lifecycle import Outcome
from floe.matchmaker.server import create_app
from floe.matchmaker.web import charts, outcomes
from tests.matchmaker import support as s

from .cdp import Chromium
from .conftest import ROOT, Browser

ARTIFACTS = ROOT / "test-artifacts" / "web"
RUN = 2 * 3600  # seconds of the campaign before the pages are read
FULL_DISK = "wn-b07"


def _outcome(rng: random.Random, name: str, job: int, host: str) -> tuple[float, Outcome]:
    """How long an attempt runs and how it ends: simulate fails on the host with the full disk,
    and now and then on an event out of range."""
    if name == "generate":
        wall, peak = rng.gauss(6 * 60, 80), rng.uniform(280, 700) * MIB
    else:
        wall, peak = rng.gauss(22 * 60, 5 * 60), rng.uniform(1.1, 1.85) * GIB
    wall = max(wall, 30.0)
    usage = {"wall_time": wall, "cpu_time": wall * 0.93, "peak_memory": int(peak)}
    stderr = f"reading /data/gen/job{job:03d}.dat\n"
    if name == "simulate" and host == FULL_DISK:
        wall = wall / 6
        stderr += (f"Traceback (most recent call last):\n  File \"sim.py\", line 88\n"
                   f"OSError: [Errno 28] No space left on device: "
                   f"'/scratch/floe-{rng.randrange(10**6)}/hits_{job}.h5'\n\n")
    elif name == "simulate" and rng.random() < 0.12:
        stderr += f"ValueError: energy {rng.uniform(1, 9):.2f}e5 GeV out of range in event " \
                  f"{rng.randrange(10000)}\n"
    else:
        return wall, Outcome.from_dict({"exit_code": 0, "usage": usage | {"wall_time": wall}})
    return wall, Outcome.from_dict({
        "exit_code": 1, "error_class": "task_error", "error_message": "module 1 exited with "
        "code 1", "stderr_tail": stderr, "usage": usage | {"wall_time": wall}})


class Campaign:
    """A served matchmaker (alice owns the dataset) after two hours of a run."""

    async def start(self, tmp_path: Path) -> Campaign:
        self.clock = s.Clock(time.time() - RUN)
        settings = server_settings({"database": str(tmp_path / "floe.sqlite")})
        self.app = create_app(settings, clock=self.clock, background=False)
        self.server = TestServer(self.app)
        await self.server.start_server()
        self.base = str(self.server.make_url("")).rstrip("/")
        self.engine = engine = self.app[ENGINE]
        auth = self.app[AUTH]
        self.alice, self.alice_token = await auth.add_user("alice")
        sites = {name: (await auth.add_site(name))[0] for name in ("site-a", "site-b")}
        self.dataset = await s.submit(engine, self.alice, s.config(
            jobs=20, max_retries=1, description="simulation campaign: generate, then simulate",
            tasks=[s.task("generate", memory="1GiB", walltime="30m"),
                   s.task("simulate", ["generate"], memory="2GiB", walltime="1h")]))
        where = [("site-a", "wn-a01"), ("site-a", "wn-a02"), ("site-b", "wn-b06"),
                 ("site-b", FULL_DISK)]
        pilots = [(await s.pilot(engine, sites[site], host), s.slot(site=site), host)
                  for site, host in where]
        rng = random.Random(19)
        running: list[tuple[float, int, Any, Any, Outcome]] = []
        names = [t.name for t in self.dataset.config.tasks]

        async def give(number: int) -> None:
            pilot, slot, host = pilots[number]
            given = await s.ask(engine, pilot, slot)
            if given is not None:
                job, index = self.dataset.locate(given.task_id)
                wall, outcome = _outcome(rng, names[index], job, host)
                heapq.heappush(running, (self.clock.now + wall, number, given, outcome))

        for number in range(len(pilots)):
            self.clock.advance(rng.uniform(20, 90))
            await give(number)
        stop = self.clock.now + RUN - 400
        while running and running[0][0] < stop:
            ends, number, given, outcome = heapq.heappop(running)
            self.clock.now = ends
            await s.finish(engine, given, outcome)
            await give(number)
        self.clock.now = stop
        self.browsers: list[Browser] = []
        return self

    async def signed_in(self) -> Browser:
        made = Browser(self.base)
        self.browsers.append(made)
        await made.sign_in(self.alice_token)
        return made

    async def stop(self) -> None:
        for made in self.browsers:
            await made.close()
        await self.server.close()


@pytest.fixture
async def campaign(tmp_path: Path) -> AsyncIterator[Campaign]:
    started = await Campaign().start(tmp_path)
    yield started
    await started.stop()


async def _page(campaign: Campaign) -> str:
    browser = await campaign.signed_in()
    status, text, _ = await browser.get(f"/datasets/{campaign.dataset.id}")
    assert status == 200, text
    return text


def _headline(text: str) -> str:
    """The line that opens the page, as text."""
    found = re.search(r'<div class="headline">(.*?)</div>', text).group(1)
    return html.unescape(re.sub("<[^>]+>", "", found))


def _section(text: str, ident: str) -> str:
    start = text.index(f'id="{ident}"')
    return html.unescape(text[start:text.index("</section>", start)])


async def test_the_page_opens_with_progress_over_time_and_an_estimate(campaign: Campaign):
    text = await _page(campaign)
    counts = campaign.dataset.summary()
    assert 0 < counts["complete"] < 40 and counts["processing"]  # mid-run, as intended
    headline = _headline(text)
    assert f"{counts['complete']} of 40 tasks complete" in headline
    assert re.search(r"About \d+[hm]\S* to go \(done around .* UTC\), at [\d.]+ tasks an hour, "
                     r"the rate of the last 1h\.", headline), headline
    order = [text.index(f'id="{ident}"') for ident in
             ("progress", "errors", "resources", "tasks", "statistics", "jobs", "config")]
    assert order == sorted(order)
    progress = _section(text, "progress")
    assert 'class="area s-complete"' in progress and 'class="projection"' in progress
    assert "all 40 tasks" in progress and ">now<" in progress
    assert "From all " in progress and "attempts of the dataset" in progress


async def test_errors_are_grouped_by_what_stderr_said_with_an_example(campaign: Campaign):
    section = _section(await _page(campaign), "errors")
    assert "OSError: [Errno <n>] No space left on device: '<path>'" in section
    # One group for every full-disk failure: their paths differ, the group does not.
    rows = re.findall(r"<tr>(.*?)</tr>", section)
    disk = next(r for r in rows if "No space left on device" in r)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", disk)
    failures = await campaign.engine.db.fetchall(
        "SELECT count(*) AS n, count(DISTINCT task_id) AS tasks FROM attempts"
        " WHERE host = ? AND state = 'failed'", (FULL_DISK,))
    assert (cells[2], cells[3], cells[4]) == (str(failures[0]["n"]), str(failures[0]["tasks"]),
                                              "1")
    assert re.search(r'href="/tasks/\d+#attempt-\d+"', cells[5])
    assert "module 1 exited with code 1" not in section  # what stderr said, not the exit
    hosts = section[section.index("Failures by host"):]
    assert re.findall(r"<tr><td[^>]*><span[^>]*>([^<]+)<", hosts)[0] == FULL_DISK
    sites = section[section.index("Failures by site"):section.index("Failures by host")]
    assert "site-a" in sites and "site-b" in sites


async def test_runtime_and_memory_are_histograms_against_what_was_asked(campaign: Campaign):
    section = _section(await _page(campaign), "resources")
    assert section.count('class="chart histogram"') == 4  # runtime and memory, per task
    assert "requested 2GiB" in section and "requested 1GiB" in section
    assert "requested 1h" in section and "requested 30m" in section
    assert re.search(r"\d+ attempts; median \S+, 95% at most \S+, largest \S+: \d+% of the "
                     r"2GiB asked", section)


async def test_a_dataset_that_has_not_run_or_is_suspended_has_no_estimate(campaign: Campaign):
    alice = await campaign.signed_in()
    fresh = await s.submit(campaign.engine, campaign.alice, s.config(jobs=3))
    campaign.clock.advance(60)
    _, text, _ = await alice.get(f"/datasets/{fresh.id}")
    assert "No estimate: no task completed in the last hour." in _headline(text)
    for ident in ("progress", "resources"):
        assert "No attempt has ended yet." in _section(text, ident)
    assert "No attempt of this dataset has failed." in _section(text, "errors")
    status, text, _ = await alice.post(f"/datasets/{campaign.dataset.id}/suspend",
                                       {"csrf": await alice.csrf()})
    assert status == 200, text
    assert "No estimate: the dataset is suspended." in _headline(text)
    progress = _section(text, "progress")
    assert 'class="projection"' not in progress and 'class="area s-complete"' in progress


async def test_an_archived_dataset_says_so_and_reads_none_of_its_attempts(campaign: Campaign):
    alice = await campaign.signed_in()
    small = await s.submit(campaign.engine, campaign.alice, s.config(jobs=1))
    csrf = await alice.csrf()
    for action in ("abort", "archive"):
        status, text, _ = await alice.post(f"/datasets/{small.id}/{action}", {"csrf": csrf})
        assert status == 200, text
    while small.id in campaign.engine.retired:  # the archive, made in the background
        await asyncio.sleep(0.01)
    db = campaign.engine.db
    seen: list[str] = []
    fetchall = db.fetchall

    async def recording(sql: str, params: Any = ()) -> Any:
        seen.append(sql)
        return await fetchall(sql, params)

    db.fetchall = recording
    status, text, _ = await alice.get(f"/datasets/{small.id}")
    db.fetchall = fetchall
    assert status == 200, text
    assert not [q for q in seen if "FROM attempts WHERE dataset_id" in q]
    for ident in ("progress", "errors", "resources"):
        assert "attempts are archived in" in _section(text, ident)


def test_a_stderr_line_is_grouped_without_its_numbers_paths_and_addresses():
    assert outcomes.last_line("a\nValueError: x 3\n  \n\n") == "ValueError: x 3"
    assert outcomes.last_line(" \n") is None
    assert outcomes.normalized("segfault at 0x7f3a2b1c in /usr/lib/libfoo.so.1 job 12") == \
        "segfault at <hex> in <path> job <n>"
    assert outcomes.normalized("checksum deadbeef42 of run 7f0e-ok") == \
        "checksum <hex> of run 7f0e-ok"


def test_an_estimate_needs_completions_in_the_last_hour():
    now = 10_000.0
    assert outcomes.estimate([], 5, now, now).why == "no task has completed yet"
    assert outcomes.estimate([now - 4000], 5, now, 0).why == "no task completed in the last hour"
    guess = outcomes.estimate([now - 3000, now - 2000, now - 1000], 6, now, 0)
    assert guess.seconds == 7200 and guess.per_hour == 3
    # A dataset younger than an hour is judged on its life so far.
    assert outcomes.estimate([now - 60, now - 30], 4, now, now - 120).seconds == 240


@pytest.mark.parametrize("span, labels", [
    (120, ["12:00:00", "12:00:30", "12:01:00", "12:01:30"]),
    (30 * 86400, ["08 Jan", "15 Jan", "22 Jan", "29 Jan"]),
])
def test_the_time_axis_fits_two_minutes_and_a_month(span: int, labels: list[str]):
    start = 1_704_110_400.0  # 2024-01-01 12:00 UTC
    chart = charts.over_time({"complete": [start + span / 2], "failed": []}, start,
                             start + span, 10)
    assert [t for t in re.findall(r'text-anchor="middle">([^<]+)<', chart)] == labels


@pytest.mark.browser
async def test_the_report_in_chromium_on_a_desktop_and_a_phone(campaign: Campaign, chromium: str,
                                                               tmp_path: Path):
    browser = await Chromium.launch(chromium, tmp_path / "chromium")
    try:
        assert await browser.open(campaign.base + "/signin") == 200
        await browser.type("#token", campaign.alice_token)
        assert await browser.click("form.signin button") == 200
        page = f"{campaign.base}/datasets/{campaign.dataset.id}"
        assert await browser.open(page) == 200
        text = await browser.text("main")
        for words in ("Progress over time", "to go", "Errors", "No space left on device",
                      "Failures by site", "Failures by host", "Runtime and memory per task",
                      "Tasks", "Statistics"):
            assert words in text, words
        assert await browser.count("#resources svg.histogram") == 4
        # The danger button's red on white reads at 6.6:1 (it was 4.37:1).
        assert await browser.evaluate(
            "getComputedStyle(document.querySelector('button.danger')).color") == \
            "rgb(180, 35, 24)"
        await browser.screenshot(ARTIFACTS / "dataset-report.png")
        await browser.screenshot(ARTIFACTS / "dataset-report-phone.png", width=375)
        # The page down to its tables, as README shows it.
        tables = await browser.evaluate(
            "document.querySelector('#tasks').getBoundingClientRect().top + scrollY")
        await browser.screenshot(ARTIFACTS / "dataset-report-top.png", height=int(tables) - 4)
        await browser.screenshot(ARTIFACTS / "dataset-report-top-phone.png", width=375,
                                 height=1500)
        assert await _hidden_at_phone_width(browser) == []
        assert await browser.open(f"{campaign.base}/pilots?state=any") == 200
        await browser.screenshot(ARTIFACTS / "pilots-report-phone.png", width=375)
        assert await _hidden_at_phone_width(browser) == []
    finally:
        await browser.close()


async def _hidden_at_phone_width(browser: Chromium) -> list[str]:
    """What sticks out past the right edge at 375 CSS pixels: the page itself, or a cell of
    a table laid out as cards (which would be there only by scrolling its box sideways)."""
    await browser.send("Emulation.setDeviceMetricsOverride", width=375, height=800,
                       deviceScaleFactor=1, mobile=True)
    try:
        return await browser.evaluate(
            "(() => { const out = [];"
            " const edge = document.documentElement.clientWidth;"
            " if (document.documentElement.scrollWidth > edge) out.push('the page');"
            " for (const cell of document.querySelectorAll("
            "   'table.cards td')) {"
            "   const r = cell.getBoundingClientRect();"
            "   if (r.width && r.right > edge + 0.5) out.push(cell.dataset.label + ': '"
            "     + cell.innerText.slice(0, 40)); }"
            " return out; })()")
    finally:
        await browser.send("Emulation.clearDeviceMetricsOverride")
