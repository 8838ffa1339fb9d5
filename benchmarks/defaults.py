"""Benchmark of what a new user gets at the defaults: the protocol that Parsl, Work Queue, Dask
and Celery were measured with on this machine (issue 16), run on floe.

`floe server` with no settings (every default), `floe factory` with the local plugin and one
1-CPU shape, at most 2 pilots (as README's site example, with `max_total = 2`), every other site
setting at its default but `on_stop = "remove-all"`, which only decides what the factory leaves
behind when the benchmark stops it (no pilot outlives the run). Tasks are `true` with no
requirement declared (so the default walltime, 1h). Measured, all in one run:

- single-task latency: one dataset of one task at a time on the idle system, from the submit
  request to the client seeing the dataset complete (waiting as `floe wait` does, on a request
  the matchmaker answers when the dataset ends), 30 times after a warm-up: median and p90. The
  client keeps one HTTP connection open, as a script using the API would (the peers' clients
  are in-process); the same measured with a new connection for each request (urllib, as the
  `floe` commands make them) is `single_task_ms_new_connections`;
- submit-and-wait: one dataset of N tasks, from the submit to the client seeing it complete
  (waiting the same way, on the kept connection), for N = 2,000 and 10,000, 3 times each:
  tasks per second, the median and each run;
- the floor: two bare loops starting `/bin/true` (one per core) for 5 s, in the same run.

Prints one JSON object. `--small` measures 10 single tasks and N = 2,000 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.factory import Factory, Server, wait_for  # noqa: E402
from benchmarks.machine import describe  # noqa: E402

RUNS = 3
"""Submit-and-wait runs of each size; the median is reported, as the peers' figures were."""
SITE = "bench-defaults"
SHAPE = {"name": "one", "cpus": 1, "memory": "1GiB", "disk": "1GiB", "walltime": "1h"}


def dataset(jobs: int) -> dict[str, Any]:
    return {"description": "defaults benchmark", "jobs": jobs,
            "tasks": [{"name": "true", "modules": [{"command": ["true"]}]}]}


class Connection:
    """A client of the matchmaker's API on one HTTP connection that it keeps open."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.headers = {"Authorization": f"Bearer {server.user_token}",
                        "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.http.request(method, f"/api/v1{path}", headers=self.headers,
                          body=None if body is None else json.dumps(body).encode())
        answer = self.http.getresponse()
        data = answer.read()
        if answer.status >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status} {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.http.close()


def submit_and_wait(client: Connection | Server, jobs: int) -> float:
    """Seconds from the submit to the client seeing every task complete, waiting as `floe wait`
    does: a request the matchmaker answers when the dataset ends."""
    started = time.perf_counter()
    made = client.call("POST", "/datasets", dataset(jobs))["id"]
    while client.call("GET", f"/datasets/{made}/progress?until=end&wait=30")["status"] \
            != "complete":
        pass
    return time.perf_counter() - started


def latency_ms(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {"median": round(1000 * statistics.median(ordered), 1),
            "p90": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
            "runs": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="fewer runs")
    args = parser.parse_args()
    singles, sizes = (10, (2000,)) if args.small else (30, (2000, 10000))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        server = Server(root / "server", [SITE], settings_text="")
        factory = None
        try:
            factory = Factory(root / "factory", server, {
                "name": SITE, "plugin": "local", "python": sys.executable, "max_total": 2,
                "max_queued": 2, "on_stop": "remove-all", "shapes": [dict(SHAPE)]})
            submit_and_wait(server, 2)  # warm-up: the pilots start and register
            wait_for(lambda: server.site(SITE)["pilots"] == 2, 120, "both pilots", 0.1)
            time.sleep(1.0)
            client = Connection(server)
            try:
                latencies, fresh = [], []
                for _ in range(singles):  # alternated, so that both see the same moments
                    latencies.append(submit_and_wait(client, 1))
                    fresh.append(submit_and_wait(server, 1))
                runs = {str(n): [round(n / submit_and_wait(client, n), 1)
                                 for _ in range(RUNS)] for n in sizes}
            finally:
                client.close()
        finally:
            if factory is not None:
                factory.stop()
            server.stop()
    machine = describe(spawn=True)
    floor = machine["bare_spawn_per_second"]
    rates = {n: statistics.median(each) for n, each in runs.items()}
    print(json.dumps({
        "benchmark": "defaults", "machine": machine,
        "settings": "floe server and factory at their defaults; local plugin, 2 pilots of 1 "
                    "CPU; tasks `true` with no requirement declared (walltime 1h); the client "
                    "on one kept-alive HTTP connection",
        "single_task_ms": latency_ms(latencies),
        "single_task_ms_new_connections": latency_ms(fresh),
        "tasks_per_second": rates,
        "tasks_per_second_runs": runs,
        "of_bare_spawn_rate": {n: round(rate / floor, 3) for n, rate in rates.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
