"""The matchmaker as a real process under hostile or broken input: no request makes it answer
500, nothing a caller cannot prove costs it memory, one request cannot create without bound,
one client cannot use up its connections, a factory cannot hide demand from the others, and a
pilot's record cannot break a page. Each case is one that a fuzzer or an attack found."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import http.cookiejar
import io
import json
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from floe.cli.main import main as floe
from floe.matchmaker import connections
from floe.matchmaker.bounds import MAX_DEPTH
from tests.pilot.live import SETTINGS, LiveMatchmaker, wait_for

HUGE = "10000000000000000000000"
FREE = {"cpus": 1, "memory": 2**30, "disk": 2**30, "seconds": 3600, "max_tasks": 1}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveMatchmaker]:
    directory = tmp_path / "matchmaker"
    directory.mkdir()
    server = LiveMatchmaker(directory, settings=SETTINGS + "max_connections_per_address = 40\n"
                                                          "max_queued_tasks_per_user = 5000\n"
                                                          "materialize_chunk = 1\n")
    server.admin_token = server._floe("user", "token", "root")["token"]
    server.start()
    yield server
    server.close()


def raw(live: LiveMatchmaker, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, token: str | None = None) -> tuple[int, Any]:
    """One request as sent, the answer parsed as JSON where it is JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=sent)
        answer = conn.getresponse()
        text = answer.read()
    finally:
        conn.close()
    try:
        return answer.status, json.loads(text)
    except ValueError:
        return answer.status, text.decode(errors="replace")


def dataset(jobs: int = 1, **task: Any) -> dict[str, Any]:
    return {"description": "hardening", "jobs": jobs,
            "tasks": [{"name": "work", "requirements": {"memory": "64MiB", "walltime": "1m"},
                       "modules": [{"command": ["true"]}], **task}]}


def handed_out(live: LiveMatchmaker) -> tuple[int, str, dict[str, Any]]:
    """A pilot of site-a and the attempt it was given (a dataset of one job is submitted)."""
    live.submit(dataset())
    pilot, key = live.register_pilot()
    attempt = wait_for(lambda: live.api("POST", f"/pilots/{pilot}/ask", FREE,
                                        token=key)[1]["attempts"], 10, "a task")[0]
    return pilot, key, attempt


def server_log(live: LiveMatchmaker) -> str:
    return (live.directory / "server.log").read_text()


# -- no input answers 500 -------------------------------------------------------------------


def test_numbers_beyond_what_storage_holds_are_refused_with_a_sentence(live):
    pilot, key, attempt = handed_out(live)
    for method, path, token, headers in [
            ("POST", f"/api/v1/attempts/{HUGE}/heartbeat", None, {"X-Floe-Passkey": "x"}),
            ("GET", f"/api/v1/tasks/{HUGE}", live.user_token, {}),
            ("GET", f"/api/v1/attempts/{HUGE}", live.user_token, {}),
            ("GET", f"/api/v1/pilots?after={HUGE}", live.user_token, {}),
            ("GET", "/api/v1/datasets/1/tasks?job=9223372036854775808", live.user_token, {}),
            ("GET", "/api/v1/datasets/1/tasks?after=%D9%A3", live.user_token, {}),
            ("POST", f"/api/v1/pilots/{HUGE}/reports", key, {}),
            ("GET", "/api/v1/datasets/" + "9" * 5000, live.user_token, {})]:
        body = b'{"reports": [], "usage": {}}' if method == "POST" else None
        status, answer = raw(live, method, path, body, headers, token)
        assert status == 400, (path, status, answer)
        assert "whole number" in answer["error"], answer
    status, answer = raw(live, "POST", f"/api/v1/pilots/{pilot}/reports", json.dumps(
        {"reports": [{"attempt_id": int(HUGE), "passkey": "x", "exit_code": 0}]}).encode(),
        token=key)
    assert status == 400 and "attempt_id: must be at most" in answer["error"], answer
    status, answer = raw(live, "POST", f"/api/v1/attempts/{attempt['id']}/report",
                         b'{"exit_code": 0, "usage": {"cpu_time": 1e400}}',
                         {"X-Floe-Passkey": attempt["passkey"]})
    assert status == 400 and "too large for a double" in answer["error"], answer


def test_a_log_upload_with_an_empty_body_stores_an_empty_log(live):
    _, _, attempt = handed_out(live)
    status, answer = raw(live, "PUT", f"/api/v1/attempts/{attempt['id']}/logs/stdout", b"",
                         {"X-Floe-Passkey": attempt["passkey"]})
    assert (status, answer) == (200, {"stored": 0})


def test_bodies_nested_too_deep_are_refused_before_parsing(live):
    pilot, key, attempt = handed_out(live)
    deep = b"[" * 1000 + b"]" * 1000
    for path, token, headers in [
            ("/api/v1/datasets", live.user_token, {}),
            (f"/api/v1/pilots/{pilot}/ask", key, {}),
            (f"/api/v1/attempts/{attempt['id']}/heartbeat", None,
             {"X-Floe-Passkey": attempt["passkey"]})]:
        status, answer = raw(live, "POST", path, deep, headers, token)
        assert status == 400 and f"more than {MAX_DEPTH} deep" in answer["error"], answer
    steering: Any = 1
    for _ in range(700):
        steering = {"x": steering}
    config = dict(dataset(), steering={"parameters": {"deep": steering}})
    status, answer = raw(live, "POST", "/api/v1/datasets", json.dumps(config).encode(),
                         token=live.user_token)
    assert status == 400 and "deep" in answer["error"], answer
    shallow = dataset()
    shallow["steering"] = {"parameters": {"nested": [[[[{"a": [1, 2, {"b": "[{"}]}]]]]}}
    status, answer = raw(live, "POST", "/api/v1/datasets", json.dumps(shallow).encode(),
                         token=live.user_token)
    assert status == 201, answer


def test_numbers_no_task_or_user_could_have_are_refused(live):
    for requirements, field in [({"memory": "$eval(2**4000)"}, "memory"),
                                ({"disk": 10**400}, "disk"), ({"cpus": 2**63}, "cpus"),
                                ({"walltime": "99999999999999999999d"}, "walltime")]:
        status, answer = live.api("POST", "/datasets", dataset(requirements=requirements))
        assert status == 400 and f"requirements.{field}: expected" in answer["error"], answer
    status, answer = raw(live, "POST", "/api/v1/datasets",
                         b'{"jobs": ' + b"1" * 100_000 + b"}", token=live.user_token)
    assert status == 400 and "more than 4,300 digits" in answer["error"], answer
    status, answer = live.api("POST", "/sites/site-a/pilot-tokens", {"lifetime": 2_000_000},
                              token=live.site_token)
    assert status == 400 and "pilot_token_max_lifetime" in answer["error"], answer
    assert "got 2,000,000" in answer["error"], answer
    status, answer = live.api("POST", "/sites/site-a/demand", {"shapes": []},
                              token=live.user_token)
    assert status == 403 and "may not act for a site" in answer["error"], answer
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        assert floe(["user", "share", "alice", "1e9", "--db", str(live.db)]) != 0
    assert "at most 1,000,000" in said.getvalue(), said.getvalue()
    said = io.StringIO()
    with contextlib.redirect_stderr(said), pytest.raises(SystemExit) as refused:
        floe(["user", "share", "alice", "inf", "--db", str(live.db)])  # argparse's refusal
    assert refused.value.code == 2
    assert "argument share: 'inf' is not a finite number" in said.getvalue(), said.getvalue()


def test_error_messages_fit_the_documented_length(live):
    pilot, key = live.register_pilot()
    wrong = {f"{i}{'x' * 4000}": 1 for i in range(10)}
    status, answer = raw(live, "POST", f"/api/v1/pilots/{pilot}/ask",
                         json.dumps(dict(FREE, **wrong)).encode(), token=key)
    assert status == 400 and len(answer["error"]) == 10_000, len(answer["error"])
    assert answer["error"].endswith("more characters)")


def test_names_with_a_trailing_newline_are_refused(live):
    for path in ("/users", "/sites"):
        status, answer = live.api("POST", path, {"name": "bob\n"}, token=live.admin_token)
        assert status == 400 and "does not match" in answer["error"], answer
    shape = {"name": "small", "cpus": 1, "memory": 2**30, "disk": 2**30, "walltime": 600}
    for body, where in [({"shapes": [shape], "factory": "f1\n"}, "factory"),
                        ({"shapes": [dict(shape, name="small\n")]}, "shapes[0].name")]:
        status, answer = live.api("POST", "/sites/site-a/demand", body, token=live.site_token)
        assert status == 400 and answer["error"].startswith(where), answer


def signed_in(live: LiveMatchmaker) -> urllib.request.OpenerDirector:
    """A browser-like client of the pages, signed in as alice."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    page = opener.open(live.url + "/signin").read().decode()
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"token": live.user_token, "next": "/", "csrf": csrf})
    assert "Sign out" in opener.open(live.url + "/signin", form.encode()).read().decode()
    return opener


def page_status(opener: urllib.request.OpenerDirector, url: str) -> int:
    try:
        with opener.open(url) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_pages_parse_ids_strictly(live):
    browser = signed_in(live)
    for path in ("/datasets/%C2%B2", "/datasets/" + "9" * 5000, "/tasks/%D9%A3",
                 "/tasks/" + HUGE, "/attempts/" + HUGE + "/logs/stdout", "/pilots?after=%C2%B2",
                 "/datasets/1?job=" + HUGE):
        assert page_status(browser, live.url + path) in (400, 404), path


def test_a_pilot_cannot_poison_the_pages(live):
    token = live.pilot_token()
    for resources in ({"cpus": "many"}, {"gpus": 3}, {"memory": -1}, {"gpus": [{"memory": "x"}]}):
        status, answer = live.api("POST", "/pilots", {"host": "n", "resources": resources},
                                  token=token)
        assert status == 400 and "resources." in answer["error"], answer
    pilot, _ = live.register_pilot()
    live.stop()  # a record that an older server let in, written behind the server's back
    with sqlite3.connect(live.db) as conn:
        conn.execute("UPDATE pilots SET resources = ? WHERE pilot_id = ?",
                     (json.dumps({"cpus": "many", "gpus": 3, "memory": [1]}), pilot))
    live.start()
    browser = signed_in(live)
    for path in ("/", "/pilots"):
        assert page_status(browser, live.url + path) == 200, path


# -- nothing unproved costs memory ----------------------------------------------------------


def claimed_upload(port: int, attempt_id: int, size: int) -> int:
    """Announce a body of `size` bytes with a wrong passkey and send only its first MiB: the
    status the server answers (it must not wait for the rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"PUT /api/v1/attempts/{attempt_id}/logs/stdout HTTP/1.1\r\n"
                     f"Host: x\r\nX-Floe-Passkey: wrong\r\nContent-Length: {size}\r\n\r\n"
                     .encode() + b"x" * 2**20)
        answer = sock.recv(4096).decode()
    return int(answer.split()[1])


def test_a_large_body_is_not_read_without_its_passkey(live):
    _, _, attempt = handed_out(live)
    server = psutil.Process(live.process.pid)
    before = server.memory_info().rss
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: claimed_upload(live.port, attempt["id"], 60 * 2**20),
                                 range(8)))
    assert statuses == [403] * 8
    grown = server.memory_info().rss - before
    assert grown < 32 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"
    status, answer = raw(live, "PUT", f"/api/v1/attempts/{attempt['id']}/logs/stdout",
                         b"y" * (9 * 2**20), {"X-Floe-Passkey": attempt["passkey"]})
    assert status == 413 and "8388608 bytes (the server's max_log_bytes)" in answer["error"]


def test_a_trickled_body_cannot_hold_a_turn(live):
    """Four bodies trickled a byte at a time held every turn for large bodies, for ever."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", live.port), timeout=60) as sock:
        sock.sendall(f"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     f"{live.user_token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        answer = b""
        while not answer:
            sock.sendall(b"1\r\n \r\n")
            time.sleep(0.5)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                answer = sock.recv(4096)
            sock.setblocking(True)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"came too slowly" in answer and b"64 KiB/s" in answer, answer
    assert time.monotonic() - started < 20


def test_a_client_that_gives_up_mid_body_is_one_line_in_the_log(live):
    _, _, attempt = handed_out(live)
    for path, headers in [
            (f"/api/v1/attempts/{attempt['id']}/heartbeat",
             f"X-Floe-Passkey: {attempt['passkey']}\r\n"),
            ("/api/v1/datasets", f"Authorization: Bearer {live.user_token}\r\n"),
            ("/signin", "Content-Type: application/x-www-form-urlencoded\r\n"),
            ("/datasets/1/suspend", "Content-Type: application/x-www-form-urlencoded\r\n")]:
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 1000"
                         "\r\n\r\n{\"usage\"".encode())
    assert live.api("GET", "/health")[0] == 200
    said = server_log(live)
    assert "Traceback" not in said and "ERROR" not in said, said[-3000:]


# -- limits on what one request creates ------------------------------------------------------


def test_a_submission_past_the_user_limit_is_refused_and_suspending_stops_creation(live):
    status, answer = live.api("POST", "/datasets", dataset(jobs=6000))
    assert status == 400 and "max_queued_tasks_per_user" in answer["error"], answer
    assert "5,000 unfinished tasks per user" in answer["error"], answer
    status, answer = live.api("POST", "/datasets", dataset(jobs=4000))
    assert status == 201, answer
    first = answer["id"]
    assert live.api("POST", f"/datasets/{first}/suspend")[0] == 200
    status, answer = live.api("POST", "/datasets", dataset(jobs=1001))
    assert status == 400 and "has 4,000 unfinished already" in answer["error"], answer
    created = live.get(f"/datasets/{first}")["jobs_created"]
    time.sleep(1.0)
    assert live.get(f"/datasets/{first}")["jobs_created"] == created < 4000
    assert live.api("POST", f"/datasets/{first}/resume")[0] == 200
    wait_for(lambda: live.get(f"/datasets/{first}")["jobs_created"] == 4000, 60,
             "the rest of the jobs to be created")


# -- connections ------------------------------------------------------------------------------


def test_one_address_cannot_take_every_connection(live):
    limits = Path(f"/proc/{live.process.pid}/limits").read_text()
    soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()
    assert soft == hard
    hoard = []
    try:
        for _ in range(60):
            hoard.append(socket.create_connection(("127.0.0.1", live.port)))
        time.sleep(0.5)
        closed = 0
        for sock in hoard:
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except (TimeoutError, ConnectionResetError) as exc:
                closed += isinstance(exc, ConnectionResetError)
        assert closed == 60 - 40 + 0, closed  # the live check below holds none of them
        other = http.client.HTTPConnection("127.0.0.1", live.port, timeout=5,
                                           source_address=("127.0.0.2", 0))
        other.request("GET", "/api/v1/health")
        assert other.getresponse().status == 200
        other.close()
    finally:
        for sock in hoard:
            sock.close()
    assert server_log(live).count("max_connections_per_address") == 1
    assert live.api("GET", "/health")[0] == 200


# -- demand claims --------------------------------------------------------------------------


def demand(live: LiveMatchmaker, factory: str, queued: int) -> dict[str, Any]:
    status, answer = live.api("POST", "/sites/site-a/demand", {
        "factory": factory, "shapes": [{"name": "one", "cpus": 1, "memory": 2**30,
                                        "disk": 2**30, "walltime": 3600, "queued": queued}]},
        token=live.site_token)
    assert status == 200, answer
    return answer["shapes"][0]


def test_a_factory_cannot_claim_more_pilots_than_it_holds_tokens_for(live):
    live.submit(dataset(jobs=10))
    wait_for(lambda: demand(live, "honest", 0)["pilots_needed"] == 10, 10, "the demand")
    demand(live, "greedy", 10**9)
    assert demand(live, "honest", 0)["pilots_needed"] == 10
    status, issued = live.api("POST", "/sites/site-a/pilot-tokens", {"count": 4,
                                                                      "lifetime": 600},
                              token=live.site_token)
    assert status == 201, issued
    demand(live, "greedy", 10**9)
    assert demand(live, "honest", 0)["pilots_needed"] == 6
    status, answer = live.api("DELETE", "/sites/site-a/demand?factory=greedy",
                              token=live.site_token)
    assert (status, answer) == (200, {"withdrawn": 4})
    assert demand(live, "honest", 0)["pilots_needed"] == 10


def test_the_server_says_when_its_open_files_are_too_few_for_its_idle_pilots():
    assert connections.check_open_files_limit(65536, 20000) is None
    why = connections.check_open_files_limit(1024, 20000)
    assert why.startswith("the open-files limit is 1024, and max_held_asks = 20000 idle pilots")
    assert "at least 20256" in why and "LimitNOFILE=" in why


def test_connections_near_the_open_files_limit_are_logged_once_a_minute(caplog):
    counts = connections.Counts(per_address=100, files=20)
    with caplog.at_level("WARNING", logger="floe.matchmaker.connections"):
        for number in range(30):
            assert counts.admit(f"10.0.0.{number}")
    near = [r.getMessage() for r in caplog.records if "near the open-files limit" in r.message]
    assert near == ["18 connections are open, near the open-files limit of 20: raise it "
                    "(ulimit -Hn, LimitNOFILE=) or new pilots' connections will fail"]
    for number in range(30):
        counts.release(f"10.0.0.{number}")
    assert counts.total == 0 and counts.open == {}
