"""The kinds of site a factory serves besides a cluster that shares its filesystem, each with real
parts on this machine (over ssh: tests/factory/test_ssh.py):

- no shared filesystem: the factory's workdir is private to it, and its pilots run as another
  account (the local plugin's `run_as`) that can read none of it;
- worker nodes behind a proxy: pilots in a network namespace (scripts/net/proxied-worker.sh)
  that reaches this machine only through a real tinyproxy;
- worker nodes whose python3 is too old;
- and, on any of them, a task that hunts for its pilot's credentials.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoginNode
from tests.pilot.live import LiveMatchmaker
from tests.plugins.pilots import fake_command

from .conftest import dag_dataset, record_path, site_document
from .test_site_local import cycle_until

SYSTEM_PYTHON = "/usr/bin/python3"  # what the other account can run (this venv is private)
# A worker node's python inside the network namespace: everything the launcher runs with it
# (its version check, the pilot) has only that namespace's network.
IN_NAMESPACE = "exec ip netns exec floe-worker " + SYSTEM_PYTHON + ' "$@"'


def status_of(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "factory" / "site-a" / "status.json").read_text())


def test_pilots_of_another_account_need_nothing_of_the_factorys_private_workdir(
        login_node: LoginNode, matchmaker: LiveMatchmaker, make_runner: Any,
        tmp_path: Path) -> None:
    workdir = tmp_path / "factory"
    site = make_runner(site_document(matchmaker, workdir, python=SYSTEM_PYTHON,
                                     options={"run_as": login_node.account}))
    dataset = matchmaker.submit(dag_dataset(4))
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 120,
                "every task to complete")
    cycle_until(site, lambda: not site.pilots, 60, "the pilots to leave")
    record_path("local-as-another-account", site.status(site.clock()), matchmaker, dataset)
    assert oct(workdir.stat().st_mode & 0o777) == "0o700"
    denied = login_node.as_account("ls", str(workdir))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    pilots = matchmaker.get("/pilots?site=site-a")["pilots"]
    assert len(pilots) == site.counters.submitted >= 1
    assert site.counters.ended_unregistered == 0
    outputs = [matchmaker.get(f"/attempts/{a['attempt_id']}")["stdout_tail"]
               for a in matchmaker.attempts(dataset)]
    assert sum((text or "").startswith("gen ") for text in outputs) == 4


@pytest.mark.parametrize("with_proxy", [True, False], ids=["proxy", "no-proxy"])
def test_pilots_behind_a_proxy_reach_the_matchmaker_only_through_it(
        with_proxy: bool, proxied_worker: str, matchmaker: LiveMatchmaker, make_runner: Any,
        tmp_path: Path) -> None:
    python = fake_command(tmp_path / "bin", "python3", IN_NAMESPACE) / "python3"
    proxy = {"proxy": proxied_worker} if with_proxy else {}
    site = make_runner(site_document(matchmaker, tmp_path / "factory", python=str(python),
                                     failing_after=1, max_queued=1, max_total=1, **proxy))
    dataset = matchmaker.submit(dag_dataset(2))
    if with_proxy:
        cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 120,
                    "every task to complete through the proxy")
        record_path("behind-a-proxy", site.status(site.clock()), matchmaker, dataset)
        assert site.counters.ended_unregistered == 0
        log = Path("/var/tmp/floe-batch/proxied-worker/tinyproxy.log").read_text()
        assert re.search(rf"Established connection to host \"127\.0\.0\.1\" using file "
                         rf"descriptor \d+|127\.0\.0\.1:{matchmaker.port}", log), log[-2000:]
        return
    cycle_until(site, lambda: site.counters.ended_unregistered >= 1, 120,
                "the pilot to give up")
    record_path("proxy-not-set", site.status(site.clock()), matchmaker, dataset)
    assert set(matchmaker.states(dataset)) == {"ready", "waiting"}
    error = status_of(tmp_path)["health"]["last_error"]
    assert error.startswith("pilot ") and " ended without registering with the matchmaker " \
        f"at {matchmaker.url} " in error
    assert f"cannot reach the matchmaker at {matchmaker.url} (no proxy is set: https_proxy " \
           "/ http_proxy)" in error
    assert site.health.failing and site.health.backing_off(site.clock())


def test_a_worker_whose_python_is_too_old_is_named_and_the_site_backed_off(
        matchmaker: LiveMatchmaker, make_runner: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    old = fake_command(tmp_path / "bin", "python3",
                       'case "$2" in *print*) echo 3.6;; esac; exit 1') / "python3"
    site = make_runner(site_document(matchmaker, tmp_path / "factory", python=str(old),
                                     failing_after=2, backoff="60s"))
    dataset = matchmaker.submit(dag_dataset(2))
    cycle_until(site, lambda: site.health.failing, 60, "the site to be failing")
    record_path("python-too-old", site.status(site.clock()), matchmaker, dataset)
    said = f"floe pilot: no Python 3.9 or newer to run the pilot: {old} (3.6); set the " \
           "site's python setting to a Python 3.9 or newer on the nodes (on "
    assert said in status_of(tmp_path)["health"]["last_error"]
    assert said in caplog.text and "site site-a is failing" in caplog.text
    submitted = site.counters.submitted
    for _ in range(3):
        decision = site.cycle()
        assert any("backing off" in reason for reason in decision.reasons)
    assert site.counters.submitted == submitted  # not retried blindly


# A task that hunts for its pilot's credentials where a task can look: its environment, the
# environment, command line and memory of every process of its account, and the files it can
# read under /tmp and its home (also base64-decoded: the launcher carries the token so). It
# tries each find on the matchmaker (to register a pilot, and as a key) and prints a report.
HUNTER = r'''
import base64, glob, json, os, re, sys, urllib.request, urllib.error
url = sys.argv[1]
TOKEN = re.compile(rb"floe_[pk]_[A-Za-z0-9_-]{20,}")
found, unreadable = set(), []
def scan(data):
    found.update(m.decode() for m in TOKEN.findall(data))
    for blob in re.findall(rb"[A-Za-z0-9+/=\n]{40,}", data):
        try:
            decoded = base64.b64decode(blob.replace(b"\n", b""))
            found.update(m.decode() for m in TOKEN.findall(decoded))
        except Exception:
            pass
scan("\n".join(f"{k}={v}" for k, v in os.environ.items()).encode())
me = os.getuid()
for proc in glob.glob("/proc/[0-9]*"):
    try:
        if os.stat(proc).st_uid != me or int(proc[6:]) == os.getpid():
            continue
    except OSError:
        continue
    for part in ("environ", "cmdline"):
        try:
            scan(open(f"{proc}/{part}", "rb").read())
        except OSError as err:
            unreadable.append(f"{proc}/{part}: {err.strerror}")
    try:
        with open(f"{proc}/maps") as maps, open(f"{proc}/mem", "rb") as mem:
            for line in maps:
                span, perms = line.split()[:2]
                if "r" not in perms or "[vvar]" in line:
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    scan(mem.read(min(end - start, 64 << 20)))
                except (OSError, ValueError, OverflowError):
                    pass
    except OSError as err:
        unreadable.append(f"{proc}/mem: {err.strerror}")
for top in ("/tmp", os.path.expanduser("~")):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    scan(f.read(1 << 20))
            except OSError:
                pass
worked = []
for token in sorted(found):
    for method, path, body in (("POST", "/pilots", {"host": "thief"}),
                               ("POST", "/pilots/1/exit", {"reason": "stolen"})):
        request = urllib.request.Request(url + "/api/v1" + path, json.dumps(body).encode(),
                                         {"Authorization": "Bearer " + token,
                                          "Content-Type": "application/json"}, method=method)
        try:
            urllib.request.urlopen(request, timeout=10)
            worked.append(f"{method} {path} with {token[:9]}")
        except urllib.error.HTTPError:
            pass
print(json.dumps({"found": sorted(t[:7] for t in found), "worked": worked,
                  "unreadable": sorted(u for u in unreadable if "environ" in u or "mem" in u)}))
'''


def test_a_hostile_task_finds_no_credential_its_pilot_could_still_use(
        login_node: LoginNode, matchmaker: LiveMatchmaker, make_runner: Any,
        tmp_path: Path) -> None:
    site = make_runner(site_document(matchmaker, tmp_path / "factory", python=SYSTEM_PYTHON,
                                     max_queued=1, max_total=1,
                                     options={"run_as": login_node.account}))
    dataset = matchmaker.submit({"description": "hunt", "jobs": 1, "tasks": [{
        "name": "hunt", "requirements": {"cpus": 1, "memory": "256MB", "disk": "1MB",
                                         "walltime": "5m"},
        "modules": [{"command": [SYSTEM_PYTHON, "-c", HUNTER, matchmaker.url]}]}]})
    cycle_until(site, lambda: set(matchmaker.states(dataset)) == {"complete"}, 180,
                "the hunting task to finish")
    (attempt,) = matchmaker.attempts(dataset)
    report = json.loads(matchmaker.get(f"/attempts/{attempt['attempt_id']}")["stdout_tail"])
    assert report["worked"] == [], report
    assert "floe_k_" not in report["found"], report  # the pilot's key never left the pilot
    (pilot,) = matchmaker.get("/pilots?site=site-a")["pilots"]
    pid_unreadable = [line for line in report["unreadable"] if "environ" in line]
    assert pid_unreadable, report  # the pilot's own /proc/<pid>/environ is closed to it
    assert pilot["state"] in ("running", "exited") and pilot["host"] != "thief"
    assert len(matchmaker.get("/pilots?site=site-a")["pilots"]) == 1  # none registered by it

