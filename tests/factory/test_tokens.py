"""The pilot tokens a factory hands its pilots, against a real matchmaker: a pilot token (never
the site's), of the factory's site, that outlives the pilot's walltime by the site's
`queue_allowance` and is refused once expired; and pilots that wait in the queue longer than that
allowance are removed, since their token could run out before their walltime does.

Elsewhere: an expired pilot token's ask is refused (tests/matchmaker/test_report_ask.py,
`test_the_ask_part_needs_the_pilots_own_token_and_the_report_is_recorded_anyway`), and a running
pilot whose token expires reports what it ran and stops asking
(tests/pilot/test_online_faults.py).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from floe.factory.site import SiteRunner
from floe.matchmaker.passkeys import hash_secret
from tests.pilot.live import LiveMatchmaker, wait_for
from tests.plugins.pilots import fake_command

from .conftest import dag_dataset, site_document

WALLTIME = 20 * 60          # the shape of site_document
OVERHEAD = 5 * 60
ALLOWANCE = 3600
NEEDED = WALLTIME + OVERHEAD + ALLOWANCE
# A worker node's "python" that records the pilot's environment and token file (its launcher
# runs `python pilot.pyz --token-file FILE ...`), then leaves; its other uses (`-c`, the
# launcher's version check and file writes) go to the real one.
RECORDING_PYTHON = """
if [ "$1" = -c ]; then exec /usr/bin/env python3 "$@"; fi
cp "$3" "{seen}/$$.token" && env > "{seen}/$$.tmp" && mv "{seen}/$$.tmp" "{seen}/$$.env"
"""
# A SLURM whose jobs stay pending (or run, once the test writes RUNNING into <id>.state).
FAKE_SLURM = {
    "sbatch": """
n=$(( $(cat {state}/next 2>/dev/null || echo 100) + 1 )); echo $n > {state}/next
sed -n 's/^#SBATCH --job-name=//p' "$2" > {state}/jobs/$n
echo $n""",
    "squeue": """
for job in {state}/jobs/*; do
    [ -e "$job" ] || continue
    id=$(basename "$job"); state=$(cat {state}/$id.state 2>/dev/null || echo PENDING)
    echo "$id|$state|None|2026-01-01T00:00:00|2026-01-01T00:01:00|$(cat "$job")"
done""",
    "scancel": 'for id in "$@"; do rm -f {state}/jobs/$id; echo $id >> {state}/cancelled; done',
}


def token_row(matchmaker: LiveMatchmaker, token: str) -> dict[str, Any]:
    """What the matchmaker's database holds about a token: kind, site, expiry, revocation."""
    with sqlite3.connect(f"file:{matchmaker.db}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT kind, sites.name AS site, expires, revoked FROM tokens "
                         "LEFT JOIN sites USING (site_id) WHERE token_hash = ?",
                         (hash_secret(token),)).fetchone()
    assert row is not None, "the matchmaker does not know the pilot's token"
    return dict(row)


def handed_token(matchmaker: LiveMatchmaker, make_runner: Any,
                 tmp_path: Path) -> tuple[str, dict[str, str], float, float]:
    """One factory cycle that starts one pilot: the token the pilot got, the pilot's whole
    environment, and the times just before and after the cycle."""
    matchmaker.submit(dag_dataset(1))
    seen = tmp_path / "seen"
    seen.mkdir()
    python = fake_command(tmp_path / "bin", "python", RECORDING_PYTHON.format(seen=seen))
    site = make_runner(site_document(
        matchmaker, tmp_path / "factory", python=str(python / "python"),
        walltime_overhead=f"{OVERHEAD}s", queue_allowance=f"{ALLOWANCE}s", max_queued=1,
        max_total=1))
    before = time.time()
    assert site.cycle().submit == {"small": 1}
    after = time.time()
    [record] = wait_for(lambda: list(seen.glob("*.env")), 30, "the pilot to start")
    env = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    return record.with_suffix(".token").read_text(), env, before, after


def test_a_pilot_gets_a_pilot_token_of_its_site_that_outlives_walltime_and_queue_allowance(
        matchmaker: LiveMatchmaker, make_runner: Any, tmp_path: Path) -> None:
    token, env, before, after = handed_token(matchmaker, make_runner, tmp_path)
    assert token.startswith("floe_p_")
    assert matchmaker.site_token not in env.values() and token not in env.values()
    row = token_row(matchmaker, token)
    assert (row["kind"], row["site"], row["revoked"]) == ("pilot", "site-a", None)
    # Valid for the walltime asked of the batch system plus the queue allowance from the
    # submission; asked for twice that (so that one token serves many cycles), and no longer.
    assert before + NEEDED <= row["expires"] <= after + 2 * NEEDED
    status, registered = matchmaker.api("POST", "/pilots", {"host": "n1"}, token=token)
    assert status == 201 and registered["site"] == "site-a"


def test_the_token_a_factory_handed_out_is_refused_once_it_has_expired(
        matchmaker: LiveMatchmaker, make_runner: Any, tmp_path: Path) -> None:
    token, _, _, _ = handed_token(matchmaker, make_runner, tmp_path)
    # Its lifetime passes while the matchmaker is down (a restart also empties its cache).
    matchmaker.stop()
    with sqlite3.connect(matchmaker.db) as db:
        db.execute("UPDATE tokens SET expires = ? WHERE token_hash = ?",
                   (time.time() - 1, hash_secret(token)))
    matchmaker.start()
    status, refused = matchmaker.api("POST", "/pilots", {"host": "n1"}, token=token)
    assert status == 401 and "this pilot token has expired" in refused["error"]


def test_pilots_queued_longer_than_the_queue_allowance_are_removed_and_replaced(
        matchmaker: LiveMatchmaker, make_runner: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    matchmaker.submit(dag_dataset(2))
    state = tmp_path / "slurm"
    (state / "jobs").mkdir(parents=True)
    commands = tmp_path / "bin"
    for name, body in FAKE_SLURM.items():
        fake_command(commands, name, body.format(state=state))
    site: SiteRunner = make_runner(site_document(
        matchmaker, tmp_path / "factory", plugin="slurm", commands_dir=str(commands),
        queue_allowance=f"{ALLOWANCE}s", max_queued=2, max_total=2))
    now = [time.time()]
    site.clock = lambda: now[0]
    assert site.cycle().submit == {"small": 2}
    assert sorted(site.pilots) == ["101", "102"]
    (state / "101.state").write_text("RUNNING\n")

    now[0] += ALLOWANCE                        # waited exactly the allowance: still welcome
    assert site.cycle().submit == {"small": 0}
    assert sorted(site.pilots) == ["101", "102"] and site.counters.queued_too_long == 0

    now[0] += 1
    decision = site.cycle()
    assert (state / "cancelled").read_text().split() == ["102"]   # not the running one
    assert site.counters.queued_too_long == 1
    assert (f"site site-a: removed pilot 102: it has waited {ALLOWANCE + 1} s in the queue, "
            f"longer than queue_allowance ({ALLOWANCE} s)") in caplog.text
    assert decision.submit == {"small": 1}                        # a fresh one, a fresh token
    assert sorted(site.pilots) == ["101", "103"]
    assert site.status(now[0])["counters"]["queued_too_long"] == 1
