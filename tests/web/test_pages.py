"""The web pages served by a real matchmaker (in this process, over loopback): signing in and out,
CSRF, who may act on a dataset, message pages for what is missing or wrong, filters and paging,
and the indexes that the pages' queries read through."""

from __future__ import annotations

import asyncio
import html
import re
import ssl
import time
import urllib.request
from typing import Any

import pytest
from yarl import URL

from floe.matchmaker import actions
from floe.matchmaker.api.framework import AUTH
from floe.matchmaker.model import DatasetStatus
from floe.matchmaker.web.datasets import PAGE
from floe.matchmaker.web.history import History, by_site, by_state
from tests.matchmaker import support as s
from tests.pilot.live import LiveMatchmaker

from .conftest import Browser, Pages, csrf_of

EXTERNAL = re.compile(r'(?:src|href|action)="(?![/#?]|data:)([^"]*)"')


async def test_a_page_sends_a_stranger_to_sign_in_and_back_to_it_after(pages: Pages):
    browser = pages.browser()
    status, _, reply = await browser.get(f"/datasets/{pages.dataset.id}?state=failed",
                                         allow_redirects=False)
    assert status == 303
    assert reply.headers["Location"] == "/signin?next=%2Fdatasets%2F1%3Fstate%3Dfailed"
    status, form, _ = await browser.get(reply.headers["Location"])
    assert 'name="next" value="/datasets/1?state=failed"' in form
    status, text, _ = await browser.post("/signin", {"token": pages.alice_token, "csrf":
                                                     csrf_of(form),
                                                     "next": "/datasets/1?state=failed"})
    assert status == 200 and "<h1>Dataset 1" in text


async def test_the_session_cookie_is_httponly_samesite_strict_and_never_the_token(pages: Pages):
    browser = pages.browser()
    _, form, _ = await browser.get("/signin")
    _, _, reply = await browser.post("/signin", {"token": pages.alice_token,
                                                 "csrf": csrf_of(form)}, allow_redirects=False)
    assert reply.status == 303 and reply.headers["Location"] == "/"
    cookies = [v for k, v in reply.headers.items() if k.lower() == "set-cookie"]
    session = next(c for c in cookies if c.startswith("floe_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    assert "Secure" not in session  # plain HTTP here; over TLS the cookie is Secure
    assert pages.alice_token not in session and pages.alice_token[7:] not in session


async def test_a_wrong_token_is_refused_with_a_sentence_and_a_site_token_is_no_user(
        pages: Pages):
    browser = pages.browser()
    for token, status, words in (("floe_u_nope", 401, "not known or was revoked"),
                                 ("hello", 401, "not a floe token"),
                                 (pages.site_token, 403, "not a user token")):
        _, form, _ = await browser.get("/signin")
        got, text, _ = await browser.post("/signin", {"token": token, "csrf": csrf_of(form)})
        assert got == status and words in text, text
        assert "Sign out" not in text


async def test_signing_in_needs_the_value_that_the_sign_in_page_gave(pages: Pages):
    status, text, _ = await pages.browser().post("/signin", {"token": pages.alice_token,
                                                             "csrf": "made-up"})
    assert status == 403 and "did not come from this server's sign-in page" in html.unescape(text)


async def test_every_page_renders_with_nothing_from_outside_the_server(pages: Pages):
    browser = await pages.signed_in(pages.bob_token)
    dataset = pages.dataset.id
    expected = {
        "/": ["Datasets", "test dataset", "5 of 6 complete, 1 failed", "site-a", "<svg"],
        f"/datasets/{dataset}": ["check: 3 events out of range", "task_error", "Steering",
                                 "events", "all tasks", "Progress over time",
                                 "Runtime and memory per task", "Failures by host"],
        f"/tasks/{pages.failed_task}": ["Attempt", "node7", "task_error", "full stderr",
                                        "Exit code"],
        "/pilots?state=any": ["site-a", "node7", "Empty pilots", "running"],
        "/shares": ["alice", "bob", "root", "admin", "half-life"],
    }
    for path, words in expected.items():
        status, text, reply = await browser.get(path)
        assert status == 200, (path, text)
        for word in words:
            assert word in text, (path, word)
        assert EXTERNAL.findall(text) == [], path
        assert "<script" not in text.lower()
        policy = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "form-action 'self'" in policy
        assert reply.headers["Cache-Control"] == "no-store"
    status, css, _ = await browser.get("/static/floe.css")
    assert status == 200 and "url(" not in css and "@import" not in css


async def test_the_full_log_is_its_text(pages: Pages):
    browser = await pages.signed_in(pages.alice_token)
    status, text, reply = await browser.get(f"/attempts/{pages.failed_attempt}/logs/stderr")
    assert status == 200 and reply.content_type == "text/plain"
    assert text.startswith("line 0 of the full log\n") and "line 499 of the full log" in text
    assert reply.headers["X-Floe-Log-Complete"] == "1"
    # A log short enough to travel whole in the report's tail is complete, not "cut".
    status, text, reply = await browser.get("/attempts/1/logs/stdout")
    assert status == 200 and not text.startswith("[the pilot did not upload")
    assert reply.headers["X-Floe-Log-Complete"] == "1"


@pytest.mark.parametrize("path, status, words", [
    ("/datasets/99", 404, "There is no dataset 99"),
    ("/datasets/abc", 404, "There is no dataset abc"),
    ("/tasks/9999", 404, "There is no task 9999"),
    ("/attempts/9999/logs/stdout", 404, "There is no attempt 9999"),
    ("/attempts/1/logs/stdin", 404, "two logs, stdout and stderr"),
    ("/no/such/page", 404, "There is no page /no/such/page"),
    ("/datasets/1?state=bogus", 400, "state: 'bogus' is not a task state"),
    ("/datasets/1?task=nope", 400, "has no task named 'nope' (it has generate, check)"),
    ("/datasets/1?job=7", 400, "job: expected a number of at least 0 and at most 2"),
    ("/datasets/1?after=x", 400, "after: expected a whole number, got 'x'"),
    ("/pilots?site=mars", 404, "there is no site named 'mars'"),
    ("/pilots?state=asleep", 400, "state: 'asleep' is not a pilot state"),
])
async def test_what_is_missing_or_wrong_is_a_message_page_with_its_status(
        pages: Pages, path: str, status: int, words: str):
    browser = await pages.signed_in(pages.alice_token)
    got, text, reply = await browser.get(path)
    assert (got, reply.content_type) == (status, "text/html")
    assert words in html.unescape(text) and "Traceback" not in text
    assert "Sign out" in text  # still the site's page, with its navigation


async def test_only_the_owner_and_admins_see_the_action_buttons(pages: Pages):
    path = f"/datasets/{pages.dataset.id}"
    for token, shown in ((pages.alice_token, True), (pages.admin_token, True),
                         (pages.bob_token, False)):
        _, text, _ = await (await pages.signed_in(token)).get(path)
        assert ('action="/datasets/1/reset-failed"' in text) is shown
        assert ('action="/datasets/1/priority"' in text) is shown
        assert ("<h2>Actions</h2>" in text) is shown


ACTIONS = ("suspend", "resume", "priority", "reset-all", "add-jobs", "abort", "archive",
           "delete")


@pytest.mark.parametrize("role, allowed", [("owner", True), ("admin", True),
                                           ("other user", False)])
async def test_who_may_act_on_a_dataset_and_that_the_server_refuses_the_others(
        pages: Pages, role: str, allowed: bool):
    token = {"owner": pages.alice_token, "admin": pages.admin_token,
             "other user": pages.bob_token}[role]
    browser = await pages.signed_in(token)
    fresh = await s.submit(pages.engine, pages.alice, s.config(jobs=2))
    csrf = await browser.csrf()
    for action in ACTIONS:
        while fresh.id in pages.engine.retired:  # the archive, made in the background
            await asyncio.sleep(0.01)
        status, text, _ = await browser.post(f"/datasets/{fresh.id}/{action}",
                                             {"csrf": csrf, "priority": "7", "jobs": "3",
                                              "confirm": "yes"})
        if allowed:
            assert status == 200 and 'role="status"' in text, (action, text)
        else:
            assert status == 403, (action, status)
            assert "may only change their own datasets" in text
    status, text, _ = await browser.post(f"/datasets/{pages.dataset.id}/reset-failed",
                                         {"csrf": csrf})
    assert status == (200 if allowed else 403)
    if allowed:
        assert "Reset 1 failed tasks" in text
        assert fresh.priority == 7 and fresh.status == DatasetStatus.FAILED  # aborted
        assert fresh.id not in pages.engine.datasets  # then archived, then deleted
    else:
        assert fresh.priority == 1 and pages.dataset.summary()["failed"] == 1
        assert fresh.jobs == 2 and fresh.status == DatasetStatus.PROCESSING


async def test_a_post_without_its_sessions_csrf_token_is_refused_and_changes_nothing(
        pages: Pages):
    alice = await pages.signed_in(pages.alice_token)
    fresh = await s.submit(pages.engine, pages.alice, s.config(jobs=2))
    other_session = await (await pages.signed_in(pages.alice_token)).csrf()
    for data in ({}, {"csrf": ""}, {"csrf": "forged"}, {"csrf": other_session}):
        status, text, _ = await alice.post(f"/datasets/{fresh.id}/suspend", data)
        assert status == 403 and "security token does not match your session" in text
    assert fresh.status == DatasetStatus.PROCESSING


async def test_an_action_the_dataset_cannot_take_now_says_why(pages: Pages):
    alice = await pages.signed_in(pages.alice_token)
    csrf = await alice.csrf()
    status, text, _ = await alice.post(f"/datasets/{pages.dataset.id}/suspend", {"csrf": csrf})
    assert status == 409 and "has ended (failed); reset it instead" in text
    status, text, _ = await alice.post(f"/datasets/{pages.dataset.id}/priority",
                                       {"csrf": csrf, "priority": "lots"})
    assert status == 400 and "priority: expected a number above 0" in text
    status, text, _ = await alice.post(f"/datasets/{pages.dataset.id}/delete", {"csrf": csrf})
    assert status == 400 and "Tick the box beside Delete" in text
    assert pages.dataset.id in pages.engine.datasets
    status, text, _ = await alice.post(f"/datasets/{pages.dataset.id}/explode", {"csrf": csrf})
    assert status == 404 and "There is no action 'explode'" in html.unescape(text)


async def test_signing_out_ends_the_session_on_the_server(pages: Pages):
    alice = await pages.signed_in(pages.alice_token)
    cookie = alice.session.cookie_jar.filter_cookies(URL(pages.base))["floe_session"].value
    status, text, _ = await alice.post("/signout", {"csrf": await alice.csrf()})
    assert status == 200 and "You are signed out." in text
    replay = Browser(pages.base)
    pages.browsers.append(replay)
    status, _, reply = await replay.get("/", cookies={"floe_session": cookie},
                                        allow_redirects=False)
    assert status == 303 and reply.headers["Location"].startswith("/signin")


async def test_a_revoked_token_ends_the_sessions_made_with_it(pages: Pages):
    alice = await pages.signed_in(pages.alice_token)
    await pages.app[AUTH].new_user_token(pages.alice)
    status, _, reply = await alice.get("/", allow_redirects=False)
    assert status == 303 and reply.headers["Location"].startswith("/signin")


async def test_tasks_filter_by_state_and_name_and_page_by_id(pages: Pages):
    big = await s.submit(pages.engine, pages.alice, s.config(
        jobs=60, tasks=[s.task("one"), s.task("two", ["one"])]))
    alice = await pages.signed_in(pages.alice_token)
    path = f"/datasets/{big.id}"
    first_task = big.task_id(0, 0)

    async def listed(query: str) -> tuple[list[int], str]:
        status, text, _ = await alice.get(path + query)
        assert status == 200, text
        section = text[text.index('id="tasks"'):text.index('id="statistics"')]
        return [int(t) for t in re.findall(r'href="/tasks/(\d+)"', section)], section

    ids, section = await listed("")
    assert ids == list(range(first_task, first_task + 50))
    next_page = re.search(r'href="([^"]+)" rel="next"', section).group(1).replace("&amp;", "&")
    ids, section = await listed(next_page[len(path):].split("#")[0])
    assert ids == list(range(first_task + 50, first_task + 100))
    ids, _ = await listed("?task=two&state=waiting")
    assert ids == [big.task_id(j, 1) for j in range(50)]
    ids, section = await listed(f"?state=ready&after={big.task_id(54, 0)}")
    assert ids == [big.task_id(j, 0) for j in range(55, 60)] and 'rel="next"' not in section
    ids, _ = await listed("?job=59")
    assert ids == [big.task_id(59, 0), big.task_id(59, 1)]


async def test_the_pages_read_through_indexes_never_a_whole_table(pages: Pages):
    """EXPLAIN QUERY PLAN of every query that the pages make: no table of jobs, tasks,
    attempts or pilots is scanned, and no listing is sorted after reading (which is what would
    make page 10,000 of a million-job dataset slow). Groups are sorted, but only the rows of
    a bounded slice; a dataset's statistics too, a few rows per task."""
    db = pages.engine.db
    seen: list[tuple[str, Any]] = []
    fetchall = db.fetchall

    async def recording(sql: str, params: Any = ()) -> Any:
        seen.append((sql, params))
        return await fetchall(sql, params)

    db.fetchall = recording
    alice = await pages.signed_in(pages.alice_token)
    dataset = f"/datasets/{pages.dataset.id}"
    for path in ("/", dataset, f"{dataset}?state=failed", f"{dataset}?task=check",
                 f"{dataset}?state=complete&task=generate&after=2", f"{dataset}?job=1",
                 f"{dataset}?jobs_state=failed", f"{dataset}?jobs_after=0",
                 f"/tasks/{pages.failed_task}", "/pilots", "/pilots?state=any&site=site-a",
                 "/shares"):
        status, text, _ = await alice.get(path)
        assert status == 200, (path, text)
    db.fetchall = fetchall
    assert len(seen) > 20
    for sql, params in seen:
        plan = [row["detail"] for row in await fetchall("EXPLAIN QUERY PLAN " + sql, params)]
        scans = [p for p in plan if re.match(r"SCAN (jobs|tasks|attempts|pilots|logs)\b", p)]
        assert not scans, (sql, plan)
        if "LIMIT" in sql and "GROUP BY" not in sql:  # a listing: read in order, not sorted
            assert not any("TEMP B-TREE" in p for p in plan), (sql, plan)


async def test_the_hours_that_are_over_are_read_once_and_the_current_one_each_time(
        pages: Pages):
    db = pages.engine.db
    history = History()
    asked: list[tuple[float, float]] = []
    fetchall = db.fetchall

    async def recording(sql: str, params: Any = ()) -> Any:
        asked.append(tuple(params))
        return await fetchall(sql, params)

    ended = (await fetchall("SELECT ended FROM attempts WHERE attempt_id = ?",
                            (pages.failed_attempt,)))[0]["ended"]
    hour = int(ended // 3600) * 3600
    db.fetchall = recording
    first = await history.last_day(db, hour + 1800)
    again = await history.last_day(db, hour + 1900)
    at_the_turn = await history.last_day(db, hour + 3600 + 30)
    db.fetchall = fetchall
    assert asked == [(hour - 23 * 3600, hour + 3600), (hour, hour + 3600),
                     (hour, hour + 7200)]  # the hour just over, while its commits land
    assert by_state(first) == by_state(again)
    assert total(by_state(first)) == {"complete": 5, "failed": 1}
    assert total(by_state(at_the_turn, pages.dataset.id)) == {"complete": 5, "failed": 1}
    assert total(by_state(at_the_turn, 99)) == {}
    assert by_site(first) == {"site-a": {"complete": 5, "failed": 1}}


def total(hours: dict[int, dict[str, int]]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for counts in hours.values():
        for state, n in counts.items():
            summed[state] = summed.get(state, 0) + n
    return summed


def test_over_tls_the_cookies_are_secure(tmp_path):
    (tmp_path / "tls").mkdir()
    live = LiveMatchmaker(tmp_path / "tls", tls=True)
    live.start()
    try:
        context = ssl.create_default_context(cafile=str(live.cacert))
        with urllib.request.urlopen(f"{live.url}/signin", context=context, timeout=10) as reply:
            cookie = reply.headers["Set-Cookie"]
    finally:
        live.close()
    assert cookie.startswith("floe_signin=") and "Secure" in cookie and "HttpOnly" in cookie


async def test_the_dataset_and_task_pages_say_why_tasks_wait(pages: Pages):
    waits = await s.submit(pages.engine, pages.alice, s.config(
        jobs=3, tasks=[s.task("gen"), s.task("big", ["gen"], cpus=4096)]))
    alice = await pages.signed_in(pages.alice_token)
    status, text, _ = await alice.get(f"/datasets/{waits.id}")
    assert status == 200, text
    section = html.unescape(text[text.index('id="waiting"'):text.index('id="errors"')])
    assert "Why ready tasks wait" in section and ">gen<" in section and ">3<" in section
    said = [t for t in re.findall(r'class="reason">([^<]*)<', section)]
    assert len(said) == 1 and said[0].startswith(("no pilot", "no running pilot", "none of",
                                                   "next in line", "waiting its turn")), said
    tasks = html.unescape(text[text.index('id="tasks"'):text.index('id="statistics"')])
    assert "waiting on gen (ready)" in tasks
    status, text, _ = await alice.get(f"/tasks/{waits.task_id(0, 1)}")
    assert status == 200 and "Why it waits" in text
    assert "waiting on gen (ready)" in html.unescape(text)


async def test_the_pilots_page_lists_the_hosts_that_get_no_work(pages: Pages):
    from floe.config.states import ErrorClass

    now = pages.engine.clock()
    for task_id in range(5):
        pages.engine.black_holes.ended("wn042", "site-a", task_id, ErrorClass.TASK_ERROR,
                                       "ImportError: libcuda.so.1", 3.0, now, proven=True)
    alice = await pages.signed_in(pages.alice_token)
    status, text, _ = await alice.get("/pilots")
    assert status == 200, text
    section = html.unescape(text[text.index('id="black-holes"'):])
    assert "wn042" in section and "5 different tasks failed here within 2m" in section


async def test_the_owner_changes_steering_on_the_page_and_sees_the_config_versions(pages: Pages):
    alice = await pages.signed_in(pages.alice_token)
    fresh = await s.submit(pages.engine, pages.alice, s.config(jobs=2, steering={"gcd": "a"}))
    _, text, _ = await alice.get(f"/datasets/{fresh.id}")
    assert '<option value="gcd">gcd</option>' in text and "Config versions" not in text
    status, text, _ = await alice.post(f"/datasets/{fresh.id}/steering",
                                       {"csrf": await alice.csrf(), "name": "gcd",
                                        "value": '"b"'})
    assert status == 200
    assert "next config version, for its jobs from 2 on" in text
    assert "2: from job 2, gcd=&quot;b&quot;, by alice" in text
    status, text, _ = await alice.post(f"/datasets/{fresh.id}/steering",
                                       {"csrf": await alice.csrf(), "name": "colour",
                                        "value": "red"})
    assert status == 400 and "has no steering value colour" in text


async def test_the_overview_lists_the_open_datasets_and_pages_through_those_that_ended(
        pages: Pages):
    """A server keeps every dataset it ran: the overview lists those that have not ended,
    then those that have, the latest to end first, 50 at a time, so that its size does not
    grow with the years."""
    engine = pages.engine
    engine.clock = clock = s.Clock(time.time())
    ended = [pages.dataset.id]
    for _ in range(PAGE + 10):
        clock.now += 1
        made = await s.submit(engine, pages.alice, s.config(jobs=1))
        await actions.abort(engine, made, pages.alice)
        ended.append(made.id)
    clock.now += 1
    late = await s.submit(engine, pages.bob, s.config(jobs=1))
    running = await s.submit(engine, pages.bob, s.config(jobs=2))
    await actions.abort(engine, late, pages.bob)  # the last to end, not the highest id
    ended.append(late.id)
    browser = await pages.signed_in(pages.admin_token)

    def listed(text: str) -> list[int]:
        return [int(found) for found in re.findall(r'href="/datasets/(\d+)">#', text)]

    latest = list(reversed(ended))
    status, text, _ = await browser.get("/")
    assert status == 200 and f"{len(ended):,} datasets have ended" in text
    assert listed(text) == [running.id, *latest[:PAGE]]
    older = re.search(r'href="(/\?ended_skip=\d+)"[^>]*>Older ended', text)
    assert older, text
    status, text, _ = await browser.get(html.unescape(older.group(1)))
    assert status == 200 and "Latest ended" in text and "Older ended" not in text
    assert listed(text) == [running.id, *latest[PAGE:]]
    status, text, _ = await browser.get("/?ended_skip=x")
    assert status == 400 and "ended_skip: expected a whole number" in text
