"""Benchmark of a matchmaker that has run for a long time: what a submission and a pilot's
report-and-ask cost as the datasets that have ended pile up.

A collaboration's matchmaker runs for years, and every dataset it ever ran stays known to it
(its tasks, statistics and attempts are kept, archived or not). What a user does now must not
slow down with that history. `floe server` at its defaults with one user and one site; one
open dataset of 100,000 `true` jobs that a simulated pilot (1 CPU) takes tasks of, one at a
time, reporting each done with its next ask riding on the report, as floe's pilot does; and
`H` (50, 2,000, 10,000) ended datasets of the same user (each submitted with one job and
aborted: failed, ended). At each H, on one kept-alive connection:

- submit: a one-job dataset submitted (the request to its answer, which is after the commit),
  50 times (each aborted after, so it ends too), median and p90;
- report and ask: the pilot's report of its task with the ask for the next one, 300 times,
  median and p90;
- the server's CPU per request of each (user + system, from /proc; a submit's counts its
  abort too).

The baseline, in the same run, is H = 50: the datasets of a warm-up of as many submits (and
as many reports as are measured) before the first level. Prints one JSON object. `--small`:
H up to 2,000 (the full run goes to 10,000 and takes about two minutes on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.defaults import Connection, dataset
from benchmarks.factory import Server
from benchmarks.machine import describe

SITE = "bench-history"
SLOT = {"cpus": 1, "memory": 2**30, "disk": 10 * 2**30, "gpus": 0, "seconds": 86400,
        "os": ["debian12", "linux"], "arch": "x86_64"}
REPORT = {"exit_code": 0, "usage": {"wall_time": 0.01, "cpu_time": 0.01}}
SUBMITS = 50
CYCLES = 300


class Pilot:
    """A registered pilot on a connection of its own, one task at a time."""

    def __init__(self, server: Server) -> None:
        site = Connection(server)
        site.headers["Authorization"] = f"Bearer {server.site_tokens[SITE]}"
        token = site.call("POST", f"/sites/{SITE}/pilot-tokens",
                          {"lifetime": 86400, "count": 1})["tokens"][0]
        site.close()
        self.conn = Connection(server)
        self.conn.headers["Authorization"] = f"Bearer {token}"
        me = self.conn.call("POST", "/pilots", {"host": "bench"})
        self.conn.headers["Authorization"] = f"Bearer {me['key']}"
        self.base = f"/pilots/{me['pilot_id']}"
        self.attempt = self._one(self.conn.call("POST", f"{self.base}/ask", SLOT))

    @staticmethod
    def _one(answer: dict[str, Any]) -> dict[str, Any]:
        attempts = answer.get("attempts") or ([answer["attempt"]] if answer.get("attempt")
                                              else [])
        if len(attempts) != 1:
            raise RuntimeError(f"expected one task for the pilot, got {answer}")
        return attempts[0]

    def report_and_ask(self) -> None:
        reply = self.conn.call("POST", f"{self.base}/reports", {
            "reports": [dict(REPORT, attempt_id=self.attempt["id"],
                             passkey=self.attempt["passkey"])], "ask": SLOT})
        if not reply["results"][0].get("recorded"):
            raise RuntimeError(f"the report was not recorded: {reply}")
        self.attempt = self._one(reply["next"])


def end_datasets(client: Connection, count: int) -> None:
    for _ in range(count):
        made = client.call("POST", "/datasets", dataset(1))["id"]
        client.call("POST", f"/datasets/{made}/abort", {})


def timed(server: Server, runs: int, step: Any) -> dict[str, Any]:
    """Median and p90 of `runs` calls of `step` (which returns the seconds to count), and the
    server's CPU per call."""
    before = server.psutil.cpu_times()
    seconds = sorted(step() for _ in range(runs))
    after = server.psutil.cpu_times()
    cpu = after.user + after.system - before.user - before.system
    return {"median_ms": round(1000 * statistics.median(seconds), 2),
            "p90_ms": round(1000 * seconds[int(0.9 * (runs - 1))], 2),
            "server_cpu_ms": round(1000 * cpu / runs, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="up to 2,000 ended datasets")
    args = parser.parse_args()
    levels = (SUBMITS, 2000) if args.small else (SUBMITS, 2000, 10000)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(Path(scratch) / "server", [SITE], settings_text="")
        try:
            client = Connection(server)
            client.call("POST", "/datasets", dataset(100_000))
            time.sleep(1.0)  # its first jobs are created
            pilot = Pilot(server)
            end_datasets(client, SUBMITS)  # a warm-up of the server's requests of each kind
            for _ in range(CYCLES):
                pilot.report_and_ask()
            ended = SUBMITS
            for level in levels:
                end_datasets(client, level - ended)
                ended = level

                def submit() -> float:
                    started = time.perf_counter()
                    made = client.call("POST", "/datasets", dataset(1))["id"]
                    took = time.perf_counter() - started
                    client.call("POST", f"/datasets/{made}/abort", {})
                    return took

                def cycle() -> float:
                    started = time.perf_counter()
                    pilot.report_and_ask()
                    return time.perf_counter() - started

                asked = timed(server, CYCLES, cycle)  # before the submits end 50 more
                results.append({"ended_datasets": level, "submit": timed(server, SUBMITS, submit),
                                "report_and_ask": asked})
                ended += SUBMITS
            client.close()
        finally:
            server.stop()
    print(json.dumps({
        "benchmark": "history", "machine": describe(),
        "settings": "floe server at its defaults; one user, one open dataset of 100,000 jobs "
                    "of `true`, a 1-CPU pilot taking one task at a time; ended datasets of the "
                    "same user (one job each, aborted); the client on one kept-alive connection",
        "levels": results}, indent=1))


if __name__ == "__main__":
    main()
