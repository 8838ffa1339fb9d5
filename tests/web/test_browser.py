"""The web pages in a real headless chromium, over a run that really happened: `floe server` as a
subprocess, a dataset run by a real pilot subprocess with one task failing, and a person who
signs in, opens the dataset, filters its tasks, reads the failed task's log, resets, suspends and
resumes the dataset; then another user who sees no buttons and whose forged POST is refused.

Screenshots of the main pages (and two at phone width) go to test-artifacts/web/.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.pilot.live import LiveMatchmaker, wait_for

from .cdp import Chromium
from .conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts" / "web"
NEEDS = {"memory": "64MiB", "disk": "16MiB", "walltime": "5m"}
DATASET = {
    "description": "browser test: events generated, then checked, per job",
    "jobs": 4,
    "max_retries": 0,
    "steering": {"events": 100, "bad_job": 2},
    "tasks": [
        {"name": "generate", "requirements": NEEDS, "modules": [{"command":
            "echo generating $steering(events) events for job $args(job);"
            " echo '{\"events\": $steering(events)}' > $FLOE_STATS"}]},
        # Job 2's check fails with a long stderr: longer than the tail kept with the report, so
        # the pilot uploads it whole and the page links to the full text.
        {"name": "check", "depends": ["generate"], "requirements": NEEDS, "modules": [{"command":
            "if [ $args(job) -eq $steering(bad_job) ]; then"
            " seq -f 'check: event %g out of range' 1 3000 >&2; exit 3; fi; echo checked"}]},
    ],
}

LONG = {"description": "browser test: long tasks that keep a pilot busy", "jobs": 2,
        "tasks": [{"name": "wait", "requirements": NEEDS,
                   "modules": [{"command": "sleep 45"}]}]}


async def sign_in(browser: Chromium, base: str, token: str) -> None:
    assert await browser.open(base + "/") == 200
    assert await browser.evaluate("location.pathname") == "/signin"
    await browser.type("#token", token)
    assert await browser.click("form.signin button") == 200
    assert await browser.evaluate("location.pathname") == "/"


async def test_a_user_follows_a_real_run_and_steers_it_and_another_user_cannot(
        matchmaker: LiveMatchmaker, tmp_path: Path, chromium: str):
    two_cpus = {"SLURM_CPUS_ON_NODE": "2"}
    dataset = matchmaker.submit(DATASET)
    pilot = matchmaker.start_pilot(tmp_path / "scratch", "--idle-timeout", "2s", env=two_cpus)
    assert pilot.wait(180) == 0, (tmp_path / "pilot.log").read_text()[-3000:]
    assert sorted(matchmaker.states(dataset)) == ["complete"] * 7 + ["failed"]
    # A second pilot stays busy meanwhile, both its CPUs held by another dataset's long tasks:
    # the pages show it running, and the task that a reset makes ready again stays ready.
    busy = matchmaker.submit(LONG)
    matchmaker.start_pilot(tmp_path / "busy", "--idle-timeout", "2s", env=two_cpus,
                           log_name="busy.log")
    wait_for(lambda: matchmaker.states(busy) == ["processing"] * 2, 60, "the long tasks to run")
    busy_task = matchmaker.get(f"/datasets/{busy}/tasks")["tasks"][0]["task_id"]
    # `floe user add` runs its own event loop: not in this test's.
    bob = (await asyncio.to_thread(matchmaker._floe, "user", "add", "bob"))["token"]
    base = matchmaker.url

    browser = await Chromium.launch(chromium, tmp_path / "chromium")
    try:
        await sign_in(browser, base, matchmaker.user_token)
        session = next(c for c in await browser.cookies() if c["name"] == "floe_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        overview = await browser.text("main")
        assert "browser test: events generated" in overview
        assert "7 of 8 complete, 1 failed" in overview and "0 of 2 complete" in overview
        # site-a: 1 running pilot, busy, with 2 CPUs, (its memory), 0 GPUs, 2 attempts
        site = await browser.text("main section:nth-of-type(2) tbody tr")
        assert site.startswith("site-a\t1\t1\t2\t") and site.endswith("\t0\t2"), site
        await browser.screenshot(ARTIFACTS / "overview.png")
        await browser.screenshot(ARTIFACTS / "overview-phone.png", width=375)

        assert await browser.click(f'a[href="/datasets/{dataset}"]') == 200
        page = await browser.text("main")
        assert "task_error" in page and "Reset failed tasks" in page
        await browser.screenshot(ARTIFACTS / "dataset.png")
        await browser.screenshot(ARTIFACTS / "dataset-phone.png", width=375)

        await browser.choose('#tasks select[name="state"]', "failed")
        await browser.choose('#tasks select[name="task"]', "check")
        assert await browser.click("#tasks form.filters button") == 200
        assert await browser.evaluate("location.search") == "?state=failed&task=check&job="
        assert await browser.count('#tasks a[href^="/tasks/"]') == 1

        assert await browser.click('#tasks a[href^="/tasks/"]') == 200
        task = await browser.text("main")
        assert "check of job 2" in task and "task_error" in task
        assert "check: event 3000 out of range" in task  # the tail of stderr, on the page
        await browser.screenshot(ARTIFACTS / "task.png")
        await browser.screenshot(ARTIFACTS / "task-phone.png", width=375)
        assert await browser.click('a.full-log[href$="/logs/stderr"]') == 200
        log = await browser.text("body")
        assert log.startswith("check: event 1 out of range\n")
        assert log.count("out of range") == 3000

        assert await browser.open(f"{base}/datasets/{dataset}") == 200
        assert await browser.click('form[action$="/reset-failed"] button') == 200
        assert "Reset 1 failed tasks" in await browser.text(".notice")
        assert await browser.click('form[action$="/suspend"] button') == 200
        assert "Suspended:" in await browser.text(".notice")
        assert matchmaker.get(f"/datasets/{dataset}")["status"] == "suspended"
        assert await browser.click('form[action$="/resume"] button') == 200
        assert "Resumed: 1 tasks were released." in await browser.text(".notice")
        assert matchmaker.get(f"/datasets/{dataset}")["status"] == "processing"

        assert await browser.open(f"{base}/pilots?state=any") == 200
        pilots = await browser.text("#pilots")
        assert "exited" in pilots and "idle: no work for 2s" in pilots
        assert f"wait #{busy_task} of dataset {busy}" in pilots
        await browser.screenshot(ARTIFACTS / "pilots.png")
        await browser.screenshot(ARTIFACTS / "pilots-phone.png", width=375)
        assert await browser.open(f"{base}/shares") == 200
        await browser.screenshot(ARTIFACTS / "shares.png")
        assert await browser.click("header form button") == 200
        assert "You are signed out." in await browser.text("main")

        await sign_in(browser, base, bob)
        assert await browser.open(f"{base}/datasets/{dataset}") == 200
        assert await browser.count("#actions") == 0
        assert await browser.count('form[method="post"][action^="/datasets/"]') == 0
        # Bob forges the owner's suspend form, with a valid CSRF token of his own session.
        own_csrf = await browser.evaluate("document.querySelector('input[name=csrf]').value")
        seen = len(browser.events)
        await browser.evaluate(
            "(() => { const f = document.createElement('form'); f.method = 'post';"
            f" f.action = '/datasets/{dataset}/suspend';"
            " const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf';"
            f" i.value = {json.dumps(own_csrf)}; f.appendChild(i);"
            " document.body.appendChild(f); f.submit(); })()")
        await browser.wait_event("Page.loadEventFired", seen)
        assert await browser.status() == 403
        assert "may only change their own datasets" in await browser.text("main")
        assert matchmaker.get(f"/datasets/{dataset}")["status"] == "processing"
    finally:
        await browser.close()
