"""Benchmark of what hostile input costs the matchmaker: memory under the large-body attack,
and the time it takes to refuse it, for this tree and for an earlier build in the same run.

The attack (issue 15): eight clients at once each announce a 60 MiB log upload
(`PUT /api/v1/attempts/<id>/logs/stdout`, `Content-Length: 62914560`) with a wrong passkey, and
send the whole body. The figures are the server's resident memory (its process and its writer's)
before, at the peak while the uploads run, and after; and the seconds until every upload was
answered. Both servers run at their defaults (`floe server` with no settings file), on a
database with one user, one site and one attempt handed out.

The earlier build (`--baseline`, a commit; default: the one before the hardening) is checked out
with `git worktree` into a temporary directory and run with this tree's Python.

Prints one JSON object. `--small` changes nothing (the run takes seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe  # noqa: E402

BASELINE = "015293d"
CLIENTS = 8
BODY = 60 * 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def floe(tree: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "floe.cli.main", *args, "--json"], cwd=tree,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def call(url: str, path: str, body: Any, token: str) -> Any:
    request = urllib.request.Request(url + "/api/v1" + path, json.dumps(body).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def rss(process: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def upload(port: int, attempt_id: int) -> int:
    """One attacker: the announced body, sent whole unless the server answers first."""
    chunk = b"x" * 2**20
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"PUT /api/v1/attempts/{attempt_id}/logs/stdout HTTP/1.1\r\nHost: x\r\n"
                     f"X-Floe-Passkey: wrong\r\nContent-Length: {BODY}\r\n\r\n".encode())
        try:
            for _ in range(BODY // len(chunk)):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the whole body went
        answer = sock.recv(4096).decode(errors="replace")
    return int(answer.split()[1]) if answer.startswith("HTTP/") else 0


def measure(tree: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        db = str(Path(scratch) / "floe.sqlite")
        floe(tree, "user", "add", "root", "--admin", "--db", db)
        user = floe(tree, "user", "add", "alice", "--db", db)["token"]
        site = floe(tree, "site", "add", "site-a", "--db", db)["token"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "floe.cli.main", "server", "--db", db,
                                   "--port", str(port), "--log-level", "error"], cwd=tree,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(url + "/api/v1/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            call(url, "/datasets", {"description": "attacked", "jobs": 1, "tasks": [
                {"name": "t", "modules": [{"command": "true"}]}]}, user)
            token = call(url, "/sites/site-a/pilot-tokens", {"lifetime": 600}, site)["tokens"][0]
            pilot = call(url, "/pilots", {"host": "node"}, token)
            attempt = None
            while not attempt:
                answer = call(url, f"/pilots/{pilot['pilot_id']}/ask", {
                    "cpus": 1, "memory": 2**30, "disk": 2**30, "seconds": 3600,
                    "max_tasks": 1}, pilot["key"])
                attempt = answer["attempts"]
                time.sleep(0.1)
            process = psutil.Process(server.pid)
            before = rss(process)
            peak = [before]
            running = threading.Event()
            running.set()

            def watch() -> None:
                while running.is_set():
                    peak[0] = max(peak[0], rss(process))
                    time.sleep(0.02)
            watcher = threading.Thread(target=watch)
            watcher.start()
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                statuses = list(pool.map(lambda _: upload(port, attempt[0]["id"]),
                                         range(CLIENTS)))
            seconds = time.perf_counter() - started
            time.sleep(1.0)
            running.clear()
            watcher.join()
            after = rss(process)
        finally:
            server.terminate()
            server.wait(30)
    mib = 2**20
    return {"rss_before_mib": round(before / mib, 1), "rss_peak_mib": round(peak[0] / mib, 1),
            "rss_after_mib": round(after / mib, 1),
            "grown_at_peak_mib": round((peak[0] - before) / mib, 1),
            "seconds_to_answer_all": round(seconds, 2), "statuses": sorted(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"the earlier build to compare with (a commit; default {BASELINE})")
    parser.add_argument("--small", action="store_true",
                        help="accepted for `make bench-small`: the run is short already")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        baseline = Path(scratch) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(baseline),
                        args.baseline], cwd=ROOT, check=True)
        try:
            earlier = measure(baseline)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT,
                           check=True)
    print(json.dumps({"machine": describe(),
                      "attack": {"clients": CLIENTS, "announced_bytes": BODY,
                                 "passkey": "wrong", "settings": "defaults"},
                      "this_build": measure(ROOT),
                      "baseline": dict(earlier, commit=args.baseline)}, indent=1))


if __name__ == "__main__":
    main()
