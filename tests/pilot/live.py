"""A real matchmaker for the online pilot's tests: `floe server` as a subprocess on loopback,
over its own SQLite file, with an admin, a site and a user made through `floe user` / `floe
site`, and pilots started as real subprocesses (`floe pilot ...`, or the bundle)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from floe.cli.main import main as floe

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = """\
heartbeat_interval = "5s"
heartbeat_timeout = "30s"
sweep_interval = "1s"
idle_wait = "1s"
flush_interval = "1s"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "the condition"
             ) -> Any:
    """Poll `check` until it returns something true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class LiveMatchmaker:
    """One matchmaker process (started again on the same database after `stop()`)."""

    def __init__(self, directory: Path, tls: bool = False, settings: str = SETTINGS) -> None:
        self.directory = directory
        self.db = directory / "floe.sqlite"
        self.settings = directory / "server.toml"
        self.settings.write_text(settings)
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        # `floe server --self-signed` makes its certificate beside the database.
        self.cacert = directory / "floe-selfsigned.crt"
        self.process: subprocess.Popen | None = None
        self.pilots: list[subprocess.Popen] = []
        self._floe("user", "add", "root", "--admin")
        self.site_token = self._floe("site", "add", "site-a")["token"]
        self.user_token = self._floe("user", "add", "alice")["token"]

    def _floe(self, *args: str) -> dict[str, Any]:
        """`floe user ...` / `floe site ...` on the database (in this process: it is quicker)."""
        printed, said = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(said):
            assert floe([*args, "--db", str(self.db), "--json"]) == 0, said.getvalue()
        return json.loads(printed.getvalue())

    # ------------------------------------------------------------ the server

    def start(self) -> None:
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "floe.cli.main", "server", "--db", str(self.db), "--port",
                 str(self.port), "--settings", str(self.settings), "--log-level", "warning",
                 *(["--self-signed"] if self.tls else [])],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, 30, "the matchmaker to answer")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError("the matchmaker exited: "
                                 + (self.directory / "server.log").read_text()[-2000:])
        try:
            return self.api("GET", "/health")[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        for pilot in self.pilots:
            if pilot.poll() is None:
                pilot.kill()
                pilot.wait()
        self.stop()
        log = self.directory / "server.log"
        said = log.read_text() if log.exists() else ""
        assert "database writes are stalled" not in said, \
            "a database write waited longer than the watchdog allows:\n" + said[-3000:]

    # ------------------------------------------------------------ the API

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 10.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.user_token}")
        context = ssl.create_default_context(cafile=str(self.cacert)) if self.tls else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def get(self, path: str) -> Any:
        status, data = self.api("GET", path)
        assert status == 200, data
        return data

    def pilot_token(self, lifetime: int = 3600) -> str:
        """A fresh pilot token of site-a, which registers one pilot."""
        status, data = self.api("POST", "/sites/site-a/pilot-tokens", {"lifetime": lifetime},
                                token=self.site_token)
        assert status == 201, data
        (token,) = data["tokens"]
        return token

    def register_pilot(self, host: str = "node1") -> tuple[int, str]:
        """A pilot of site-a registered by hand: its id and the key it speaks with."""
        status, pilot = self.api("POST", "/pilots", {"host": host}, token=self.pilot_token())
        assert status == 201, pilot
        return pilot["pilot_id"], pilot["key"]

    def submit(self, config: dict[str, Any]) -> int:
        status, data = self.api("POST", "/datasets", config)
        assert status == 201, data
        dataset = data["id"]
        wait_for(lambda: self.get(f"/datasets/{dataset}")["jobs_created"] == config["jobs"],
                 10, "the jobs to be created")
        return dataset

    def tasks(self, dataset: int) -> list[dict[str, Any]]:
        """Every task of the dataset with its attempts, in job order."""
        rows = self.get(f"/datasets/{dataset}/tasks?limit=1000")["tasks"]
        return [self.get(f"/tasks/{row['task_id']}") for row in rows]

    def attempts(self, dataset: int) -> list[dict[str, Any]]:
        return sorted((a for t in self.tasks(dataset) for a in t["attempts"]),
                      key=lambda a: a["attempt_id"])

    def states(self, dataset: int) -> list[str]:
        return [row["state"] for row in
                self.get(f"/datasets/{dataset}/tasks?limit=1000")["tasks"]]

    def pilot_record(self, pilot_id: int | None = None) -> dict[str, Any]:
        pilots = self.get("/pilots")["pilots"]
        if pilot_id is None:
            assert len(pilots) == 1, pilots
            return pilots[0]
        return next(p for p in pilots if p["pilot_id"] == pilot_id)

    def statistic(self, dataset: int, name: str) -> dict[str, Any] | None:
        rows = self.get(f"/datasets/{dataset}/statistics")["statistics"]
        return next((r for r in rows if r["name"] == name and r["task"] is not None), None)

    # ------------------------------------------------------------ pilots

    def start_pilot(self, scratch: Path, *options: str, env: dict[str, str] | None = None,
                    command: list[str] | None = None, token: str | None = None,
                    log_name: str = "pilot.log") -> subprocess.Popen:
        """A pilot subprocess for site-a, its pilot token (a fresh one unless `token`) in a
        file beside the log."""
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("SLURM_", "PBS_", "SGE_", "_CONDOR_", "FLOE_",
                                            "CUDA_VISIBLE_DEVICES"))}
        environment.update(env or {})
        arguments = list(options)
        if self.tls:
            arguments += ["--cacert", str(self.cacert)]
        token_file = scratch.parent / f"{log_name}.token"
        token_file.write_text(token or self.pilot_token())
        arguments += ["--token-file", str(token_file)]
        with open(scratch.parent / log_name, "ab") as log:
            process = subprocess.Popen(
                [*(command or [sys.executable, "-m", "floe.cli.main", "pilot"]), "--matchmaker",
                 self.url, "--scratch", str(scratch), "--lifetime", "1h", "--log-level",
                 "debug", *arguments],
                cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        self.pilots.append(process)
        return process
