"""A bounded fuzzing run of the API as its OpenAPI document describes it (schemathesis, from
PyPI) against a real matchmaker process: every operation, with the credentials of each role (an
admin, a user, a site's factory, a pilot with an attempt's passkey), valid and invalid input
alike. No answer may be a 5xx, and the server's log may hold no unhandled error. The counts go
to test-artifacts/fuzz.json."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.pilot.live import SETTINGS, LiveMatchmaker, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 25
"""Fuzzed cases per operation and role, besides the examples and coverage phases."""


def fuzz(live: LiveMatchmaker, role: str, headers: dict[str, str], parameters: dict[str, object],
         folder: Path) -> Counter[int]:
    """One schemathesis run with these headers; the answers' statuses, counted."""
    config = folder / f"{role}.toml"
    config.write_text("[parameters]\n" + "".join(f'"{name}" = {json.dumps(value)}\n'
                                                 for name, value in parameters.items()))
    har = folder / f"{role}.har"
    command = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
               f"{live.url}/api/v1/openapi.json", "--checks", "not_a_server_error",
               "--max-examples", str(EXAMPLES), "--workers", "2", "--seed", "15",
               "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
               "--request-timeout", "30", "--report", "har", "--report-har-path", str(har),
               "--no-color"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    # In the test's folder: schemathesis keeps a cache of what it found where it runs.
    ran = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=folder)
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    # Exit 1 is also a fault of the tool itself (on Python 3.11, hypothesis can fail to
    # describe one of its own lambdas: "AST constructor recursion depth mismatch"); only a
    # check's failure is the server's.
    assert ran.returncode in (0, 1), ran.stdout[-4000:] + ran.stderr[-2000:]
    assert "FAILURES" not in ran.stdout and "Server error" not in ran.stdout, ran.stdout[:8000]
    return statuses


def test_no_request_of_any_role_gets_a_server_error(tmp_path):
    directory = tmp_path / "matchmaker"
    directory.mkdir()
    # Asks and progress requests are held at most a second: the fuzzer's asks with `hold` and
    # its requests for progress with `wait` would each wait up to 25 s and 60 s.
    live = LiveMatchmaker(directory, settings=SETTINGS + "max_queued_tasks_per_user = 100000\n"
                                                         'hold_asks = "1s"\n'
                                                         'max_progress_wait = "1s"\n')
    admin = live._floe("user", "token", "root")["token"]
    live.start()
    try:
        dataset = live.submit({"description": "fuzzed", "jobs": 20, "tasks": [
            {"name": "work", "requirements": {"walltime": "1m"},
             "modules": [{"command": ["true"]}]}]})
        pilot, key = live.register_pilot()
        attempt = wait_for(lambda: live.api("POST", f"/pilots/{pilot}/ask", {
            "cpus": 1, "memory": 2**30, "disk": 2**30, "seconds": 3600, "max_tasks": 1},
            token=key)[1]["attempts"], 10, "a task")[0]
        known = {"path.dataset_id": dataset, "path.pilot_id": pilot,
                 "path.attempt_id": attempt["id"], "path.task_id": attempt["task_id"],
                 "path.name": "site-a"}
        # The admin goes last: its run replaces the other roles' tokens.
        roles = {"pilot": {"Authorization": f"Bearer {key}",
                           "X-Floe-Passkey": attempt["passkey"]},
                 "site": {"Authorization": f"Bearer {live.site_token}"},
                 "user": {"Authorization": f"Bearer {live.user_token}"},
                 "admin": {"Authorization": f"Bearer {admin}"}}
        found = {role: fuzz(live, role, headers, known, tmp_path)
                 for role, headers in roles.items()}
    finally:
        live.close()
    said = (directory / "server.log").read_text()
    total = sum(sum(statuses.values()) for statuses in found.values())
    errors = sum(count for statuses in found.values() for status, count in statuses.items()
                 if status >= 500)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "fuzz.json").write_text(json.dumps({
        "requests": total, "server_errors": errors, "examples_per_operation": EXAMPLES,
        "by_role": {role: {"requests": sum(statuses.values()),
                           "statuses": dict(sorted(statuses.items()))}
                    for role, statuses in found.items()}}, indent=1) + "\n")
    assert errors == 0, found
    assert total > 5000, found
    assert "unhandled error" not in said and "Traceback" not in said, said[-3000:]
