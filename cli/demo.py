"""`floe demo`: the whole system on this machine, from an empty directory to a summary.

It starts a matchmaker (`floe server`, a fresh SQLite file under the workdir, a free loopback
port), adds a user and a site with `floe user add` and `floe site add`, submits the demo dataset
through the API as that user, writes a site.toml for the chosen plugin (`local`: a few 1-CPU
pilots on this machine; `slurm`: pilots through the running single-node SLURM of
scripts/batch/slurm.sh) and starts `floe factory` on it. It shows the dataset's progress until
it ends, then stops the factory (which removes its pilots), prints a summary (tasks, retries,
pilots per site, statistics, how to look at the record again) and stops the matchmaker. Ctrl-C
stops everything the same way at any point.

Every run starts afresh in its workdir (the user's own, floe/demo in their cache directory,
unless --workdir says otherwise): the database, the factory's state and the logs of the
previous run are removed, and the dataset's `store` and `flaky_dir` steering values, where it
has them, are pointed into the workdir so that no earlier run's files change what this one does.
The exit status is 0 when every task completed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from floe.config.factory import to_toml
from floe.config.schema import counted

from .client import percent_ended, progress_bar
from .http import Client, ClientError
from .places import cache_dir

ROOT = Path(__file__).resolve().parents[1]
"""floe's source tree, or the installed floe package (which has no scripts/)."""
EXAMPLES = ROOT / "examples"
"""The example configs: the checkout's examples/, or floe/examples where floe is installed."""
SLURM_SCRIPT = ROOT / "scripts" / "batch" / "slurm.sh"
FLOE = [sys.executable, "-m", "floe.cli.main"]
"""floe as a subprocess, run in the demo's workdir: never in an installed floe's folder, where
`-m` would put its subpackages (config, cli, ...) on the path as top-level modules."""
USER = "demo"
# What each run makes in its workdir, removed at the start of the next one.
RUN_FILES = ("floe.sqlite", "floe.sqlite-wal", "floe.sqlite-shm", "server.toml", "server.log",
             "site.toml", "site.token", "factory.log", "factory", "store", "flaky")
# Pilots ask again this soon when a task's dependencies are not done yet (the default is 30 s).
SERVER_SETTINGS = 'idle_wait = "2s"\n'
PROGRESS_ORDER = ("complete", "failed", "processing", "ready", "waiting", "suspended")
LEFTOVER_WAIT = 15.0
"""Seconds pilots get to end after the factory has stopped, before the demo removes them."""
LINE_EVERY = 5.0
"""Seconds between progress lines when the output is not a terminal."""
MAX_DEMO_GPUS = 16
"""With --gpu, pilots of the GPU shape the factory may run besides the CPU ones (the local plugin
starts no more than the machine has GPUs free)."""


class DemoError(Exception):
    """Something that ends the demo, as a sentence for the user."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", choices=("local", "slurm"), default="local",
                        help="where pilots run: processes on this machine (default), or the "
                             "single-node SLURM of scripts/batch/slurm.sh")
    parser.add_argument("--dataset", type=Path,
                        help="the dataset config to run (default floe's examples/demo.json; "
                             "with --gpu, examples/gpu.json)")
    parser.add_argument("--workdir", type=Path,
                        help="where the database, configs and logs go (default: floe/demo in "
                             "your cache directory, $XDG_CACHE_HOME or ~/.cache)")
    parser.add_argument("--port", type=int, help="the matchmaker's port (default: a free one)")
    parser.add_argument("--jobs", type=int, help="run this many jobs instead of the dataset's")
    parser.add_argument("--pilots", type=int, default=4,
                        help="most pilots at once (default 4)")
    parser.add_argument("--gpu", action="store_true",
                        help="add a shape of 1-GPU pilots, each given a GPU of this machine of "
                             "its own (the local plugin: those NVML lists)")
    parser.add_argument("--gpu-devices", type=Path, metavar="FILE",
                        help="with --gpu, this machine's GPUs as a JSON list, as FLOE_NODE_GPUS "
                             "takes it, where NVML cannot list them (and for tests)")


def default_workdir() -> Path:
    """The demo's directory, the user's own: floe/demo under $XDG_CACHE_HOME (~/.cache). Not a
    fixed path that two users of one machine or checkout would share and clear for each other."""
    return cache_dir() / "demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shown(path: Path) -> str:
    """A path as the user best reads it: relative to where they are, when it is below."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def floe_on_path() -> list[str]:
    """The command to run first so that `floe` in the user's shell is this floe: none where it
    already is, else activating the virtual environment it is installed in (`make demo` makes
    .venv/ but cannot change the PATH of the shell it was started from)."""
    bin_dir = Path(sys.executable).parent
    found = shutil.which("floe")
    if found and Path(found).resolve() == (bin_dir / "floe").resolve():
        return []
    activate = bin_dir / "activate"
    if activate.exists():
        return [f". {shlex.quote(shown(activate))}"]
    return [f"export PATH={shlex.quote(str(bin_dir))}:\"$PATH\""]


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in text)


class Demo:
    """One run of the demo: its files, its processes, and what it learned from the API."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.site = args.site
        self.workdir = (args.workdir or default_workdir()).absolute()
        self.db = self.workdir / "floe.sqlite"
        # Its own per workdir: two demos sharing a batch system must not take each other's
        # pilots for orphans; a rerun in the same workdir clears what the last one left.
        self.factory_id = "demo_" + hashlib.sha256(str(self.workdir).encode()).hexdigest()[:8]
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen | None = None
        self.factory: subprocess.Popen | None = None
        self.client = Client(self.url, None)  # with the user's token once there is one
        self.dataset = 0
        self.gpu_devices: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.elapsed = 0.0

    # ------------------------------------------------------------------ setting up

    def prepare(self) -> dict[str, Any]:
        """Check what the run needs, clear the previous run; the dataset to submit."""
        from floe.config.dataset import ConfigError, load

        if self.site == "slurm":
            self.check_slurm()
        if self.args.gpu and self.site != "local":
            raise DemoError("--gpu runs GPU pilots with the local plugin: leave --site out")
        if self.args.gpu_devices is not None:
            self.gpu_devices = self.read_gpu_devices(self.args.gpu_devices)
        elif self.args.gpu:
            from floe.plugins.local import nvml_devices

            found, source = nvml_devices()
            if not found:
                raise DemoError(f"--gpu: NVML lists no GPU on this machine ({source}); "
                                "where NVML cannot list them, give them with --gpu-devices "
                                "FILE, a JSON list as FLOE_NODE_GPUS takes it (README, \"GPU "
                                "nodes\")")
        try:
            document = copy.deepcopy(load(self.args.dataset).raw)
        except ConfigError as exc:
            raise DemoError(f"{self.args.dataset} is not a valid dataset config:\n{exc}") from None
        except OSError as exc:
            raise DemoError(f"cannot read {self.args.dataset}: {exc.strerror}") from None
        if self.args.jobs is not None:
            document["jobs"] = self.args.jobs
        steering = document.get("steering") or {}
        if "store" in steering:
            steering["store"] = (self.workdir / "store").as_uri() + "/$args(dataset)"
        if "flaky_dir" in steering:
            steering["flaky_dir"] = str(self.workdir / "flaky")
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            path = self.workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (self.workdir / "flaky").mkdir()
        return document

    @staticmethod
    def read_gpu_devices(path: Path) -> list[dict[str, Any]]:
        """The --gpu-devices list, checked as the pilots will read it."""
        from floe.pilot.gpus import declared_gpus

        try:
            text = path.read_text()
            declared_gpus(text)
        except OSError as exc:
            raise DemoError(f"cannot read --gpu-devices {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise DemoError(f"--gpu-devices {path}: {exc}") from None
        return json.loads(text)

    def check_slurm(self) -> None:
        if not SLURM_SCRIPT.exists():
            raise DemoError(f"{SLURM_SCRIPT} is missing: the SLURM demo runs from floe's source "
                            "tree")
        try:
            done = subprocess.run([str(SLURM_SCRIPT), "status"], capture_output=True,
                                  text=True, check=False, timeout=60)
        except subprocess.TimeoutExpired:
            raise DemoError("scripts/batch/slurm.sh status did not answer within 60 s") from None
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip().replace("\n", "; ")
            raise DemoError(f"SLURM is not running on this machine ({said}): run "
                            "scripts/batch/slurm.sh up as root, then `floe demo --site slurm` "
                            "again")

    def floe(self, *args: str) -> dict[str, Any]:
        """`floe ARGS... --db DB --json` as a subprocess: what it printed."""
        done = subprocess.run([*FLOE, *args, "--db", str(self.db), "--json"],
                              capture_output=True, text=True, check=False, cwd=self.workdir)
        if done.returncode != 0:
            raise DemoError(f"`floe {' '.join(args)}` failed: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def start_server(self) -> None:
        settings = self.workdir / "server.toml"
        settings.write_text(SERVER_SETTINGS)
        log = self.workdir / "server.log"
        with open(log, "ab") as output:
            self.server = subprocess.Popen(
                [*FLOE, "server", "--db", str(self.db), "--port", str(self.port),
                 "--settings", str(settings), "--log-level", "warning"],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True)  # stopped by us, in order, not by the terminal's Ctrl-C
        probe = Client(self.url, None, timeout=2.0)
        deadline = time.monotonic() + 30
        while True:
            if self.server.poll() is not None:
                raise DemoError(f"the matchmaker exited at start (status "
                                f"{self.server.returncode}); {shown(log)} says:\n{tail(log)}")
            with contextlib.suppress(ClientError):
                probe.get("/api/v1/health")
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the matchmaker does not answer at {self.url}; see "
                                f"{shown(log)}")
            time.sleep(0.2)

    def site_toml(self, token_file: Path) -> Path:
        """The factory's config: quick cycles, short-lived idle pilots, all removed on stop."""
        pilots = self.args.pilots
        site: dict[str, Any] = {
            "name": self.site, "plugin": self.site, "token_file": str(token_file),
            "python": sys.executable, "max_queued": pilots, "max_total": pilots,
            "max_per_cycle": pilots, "cycle": "2s", "backoff": "2s", "removal_grace": "10s",
            "idle_timeout": "15s", "min_pilot_life": "1s", "on_stop": "remove-all",
            "shapes": [{"name": "small", "cpus": 1, "memory": "1GiB", "disk": "2GiB",
                        "walltime": "30m"}]}
        if self.args.gpu:
            site["shapes"].append({"name": "gpu", "cpus": 1, "memory": "8GiB", "disk": "2GiB",
                                   "gpus": 1, "walltime": "30m"})
            site["max_total"] = site["max_queued"] = pilots + MAX_DEMO_GPUS
            site["options"] = {"gpus": "auto"}
            if self.gpu_devices:
                site["options"] = {"gpus": [device["uuid"] for device in self.gpu_devices]}
                site["environment"] = {"FLOE_NODE_GPUS": json.dumps(self.gpu_devices)}
        document = {"matchmaker": self.url, "factory_id": self.factory_id,
                    "workdir": str(self.workdir / "factory"), "sites": [site]}
        path = self.workdir / "site.toml"
        path.write_text("# Written by `floe demo`; every key is documented in docs/factory.md.\n"
                        + to_toml(document))
        return path

    def start_factory(self, config: Path) -> None:
        with open(self.workdir / "factory.log", "ab") as output:
            self.factory = subprocess.Popen(
                # --matchmaker: a FLOE_URL the user exported (an earlier demo's closing lines
                # say to) would take the factory to another matchmaker
                [*FLOE, "factory", "--config", str(config), "--matchmaker", self.url],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def set_up(self) -> None:
        document = self.prepare()
        self.start_server()
        user_token = self.floe("user", "add", USER)["token"]
        site_token = self.floe("site", "add", self.site)["token"]
        token_file = self.workdir / "site.token"
        token_file.touch(mode=0o600)
        token_file.write_text(site_token + "\n")
        self.client = Client(self.url, user_token)
        try:
            dataset = self.client.post("/api/v1/datasets", document)
        except ClientError as exc:
            raise DemoError(f"the matchmaker refused the dataset: {exc}") from None
        self.dataset = dataset["id"]
        config = self.site_toml(token_file)
        self.start_factory(config)
        where = ("processes on this machine" if self.site == "local"
                 else "jobs in the local SLURM cluster")
        print(f"floe demo: {shown(self.args.dataset.absolute())} on the {self.site} site")
        print(f"  files       {shown(self.workdir)}/: this run's database, configs and logs "
              "(the next run clears them; --workdir puts them elsewhere)")
        print(f"  dataset     {self.dataset}: {counted(dataset['jobs'], 'job')} of "
              f"{counted(dataset['tasks_per_job'], 'task')} "
              f"({', '.join(dataset['task_names'])}), submitted as user {USER!r}")
        if dataset["description"]:
            print(f"              {dataset['description']}")
        print(f"  matchmaker  {self.url} on {shown(self.db)}, log "
              f"{shown(self.workdir / 'server.log')}")
        print(f"  factory     up to {counted(self.args.pilots, 'pilot')} of 1 CPU, as {where}")
        if self.args.gpu:
            devices = (f"the {len(self.gpu_devices)} declared in {shown(self.args.gpu_devices)}"
                       if self.gpu_devices else "those NVML lists")
            print(f"              and 1-GPU pilots, each given a GPU of its own: {devices}")
        print(f"              config {shown(config)}, log "
              f"{shown(self.workdir / 'factory.log')}")
        print("  follow it from another terminal too:")
        for line in floe_on_path():
            print(f"    {line}")
        print(f"    export FLOE_URL={self.url} FLOE_TOKEN={user_token}")
        print(f"    floe status {self.dataset}")
        print(flush=True)

    # ------------------------------------------------------------------ running

    def watch(self) -> dict[str, Any]:
        """Show progress until the dataset ends; its last summary."""
        tty = sys.stdout.isatty()
        printed = 0.0
        while True:
            if self.factory is not None and self.factory.poll() is not None:
                log = self.workdir / "factory.log"
                raise DemoError(f"the factory exited (status {self.factory.returncode}); "
                                f"{shown(log)} says:\n{tail(log)}")
            try:
                dataset = self.client.get(f"/api/v1/datasets/{self.dataset}")
                pilots = sum(s["pilots"] for s in self.client.get("/api/v1/sites")["sites"])
            except ClientError as exc:
                raise DemoError(f"lost the matchmaker: {exc}") from None
            ended = dataset["status"] in ("complete", "failed")
            line = self.progress_line(dataset["tasks"], pilots)
            if tty:
                width = shutil.get_terminal_size().columns - 1
                print("\r\033[K" + line[:width], end="\n" if ended else "", flush=True)
            elif ended or time.monotonic() - printed >= LINE_EVERY:
                print(line, flush=True)
                printed = time.monotonic()
            if ended:
                self.elapsed = time.monotonic() - self.started
                return dataset
            time.sleep(0.5)

    def progress_line(self, counts: dict[str, int], pilots: int) -> str:
        elapsed = int(time.monotonic() - self.started)
        states = " ".join(f"{state} {counts[state]}" for state in PROGRESS_ORDER
                          if counts[state] or state == "complete")
        return (f"{elapsed // 60}:{elapsed % 60:02d} {progress_bar(counts, 20)} "
                f"{percent_ended(counts, 0):>3}%  {counted(pilots, 'pilot')} | "
                f"{states}")

    # ------------------------------------------------------------------ the summary

    def pages(self, path: str, key: str, id_key: str) -> Iterator[dict[str, Any]]:
        after = 0
        while True:
            rows = self.client.get(path, after=after, limit=1000)[key]
            yield from rows
            if len(rows) < 1000:
                return
            after = rows[-1][id_key]

    def retries(self) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Each task that needed more than one attempt, with its attempts."""
        retried = []
        for row in self.pages(f"/api/v1/datasets/{self.dataset}/tasks", "tasks", "task_id"):
            if row["failures"] or row["lost"]:
                attempts = self.client.get(f"/api/v1/tasks/{row['task_id']}")["attempts"]
                if len(attempts) > 1:
                    retried.append((row, attempts))
        return retried

    def summary(self, dataset: dict[str, Any]) -> None:
        """What the dataset did, from the API (pilots after the factory has stopped)."""
        counts = dataset["tasks"]
        retried = self.retries()
        retries = sum(len(attempts) - 1 for _, attempts in retried)
        print(f"\ndataset {self.dataset} {dataset['status']} after {self.elapsed:.0f} s")
        print(f"  tasks       {counts['complete']} done, {counts['failed']} failed, of "
              f"{sum(counts.values())}")
        were = "attempt was a retry" if retries == 1 else "attempts were retries"
        print(f"  retries     {retries} {were}")
        for row, attempts in retried:
            first = attempts[0]
            why = (first["error_message"] or "").strip().splitlines()
            print(f"                {row['task']} of job {row['job']}: {len(attempts)} attempts;"
                  f" the first: {first['error_class'] or first['state']}"
                  f"{', ' + why[-1][:60] if why else ''}")
        by_site: dict[str, dict[str, int]] = {}
        for pilot in self.pages("/api/v1/pilots", "pilots", "pilot_id"):
            states = by_site.setdefault(pilot["site"], {})
            states[pilot["state"]] = states.get(pilot["state"], 0) + 1
        for site, states in sorted(by_site.items()) or [(self.site, {})]:
            detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            print(f"  pilots      site {site}: {sum(states.values())} ({detail or 'none'})")
        statistics = self.client.get(f"/api/v1/datasets/{self.dataset}/statistics")["statistics"]
        print("  statistics  over all tasks:")
        print(f"                {'kind':<9} {'name':<16} {'n':>5} {'sum':>12} {'mean':>12} "
              f"{'stddev':>12}")
        # The dataset's own statistics first; resource use that is all zero (GPUs) left out.
        for s in sorted(statistics, key=lambda s: (s["kind"] != "user", s["kind"], s["name"])):
            if s["task"] is None and (s["kind"] == "user" or s["sum"]):
                print(f"                {s['kind'][:9]:<9} {s['name'][:16]:<16} {s['count']:>5} "
                      f"{s['sum']:>12.6g} {s['mean']:>12.6g} {s['stddev']:>12.6g}")

    def epilogue(self) -> None:
        print(f"  matchmaker  stopped; it served the web pages at {self.url}/ and the API at "
              f"{self.url}/api/v1")
        print("  to look again, serve its record, open the pages (sign in with the token "
              "below) or ask it with `floe status`:")
        for line in floe_on_path():
            print(f"    {line}")
        print(f"    floe server --db {shown(self.db)} --port {self.port} &")
        print(f"    export FLOE_URL={self.url} FLOE_TOKEN={self.client.token}")
        print(f"    floe status {self.dataset}")

    # ------------------------------------------------------------------ stopping

    def stop_factory(self) -> None:
        """SIGTERM the factory (it removes its pilots), then make sure none is left."""
        if self.factory is None:
            return
        if self.factory.poll() is None:
            self.factory.send_signal(signal.SIGTERM)
            try:
                self.factory.wait(90)
            except subprocess.TimeoutExpired:
                self.factory.kill()
                self.factory.wait()
        self.factory = None
        self.remove_leftover_pilots(self.workdir / "site.toml")

    def remove_leftover_pilots(self, config_path: Path) -> None:
        """Remove the pilots of the demo's factory that are still there once it has stopped (a
        factory killed mid-way). Pilots it has just removed may take a few seconds to end
        (SLURM's COMPLETING): only those still there after LEFTOVER_WAIT are removed here."""
        from floe.config.factory import load_factory_config
        from floe.factory.site import build_plugin
        from floe.plugins import BatchError, PilotState

        config = load_factory_config(config_path, self.url)
        _, plugin = build_plugin(config, config.sites[0])
        deadline = time.monotonic() + LEFTOVER_WAIT
        try:
            while True:
                left = [batch_id for batch_id, info in plugin.status().items()
                        if info.state is not PilotState.FINISHED]
                if not left or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if left:
                print(f"floe demo: removing {counted(len(left), 'pilot')} the factory left "
                      "behind",
                      file=sys.stderr)
                plugin.remove(left)
        except BatchError as exc:
            print(f"floe demo: cannot check for pilots left behind: {exc}", file=sys.stderr)

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if args.pilots < 1 or (args.jobs is not None and args.jobs < 1):
        print("floe demo: --pilots and --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.gpu_devices is not None and not args.gpu:
        print("floe demo: --gpu-devices goes with --gpu", file=sys.stderr)
        return 2
    if args.dataset is None:
        args.dataset = EXAMPLES / ("gpu.json" if args.gpu else "demo.json")
    demo = Demo(args)
    previous = {signum: signal.signal(signum, _interrupt)
                for signum in (signal.SIGTERM, signal.SIGHUP)}
    status = 1
    try:
        demo.set_up()
        dataset = demo.watch()
        demo.stop_factory()  # first, so that the summary shows how its pilots ended
        demo.summary(dataset)
        status = 0 if dataset["status"] == "complete" else 1
    except DemoError as exc:
        print(f"\nfloe demo: {exc}", file=sys.stderr)
    except ClientError as exc:
        print(f"\nfloe demo: the matchmaker: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nfloe demo: interrupted; stopping the factory, its pilots and the matchmaker",
              file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stop is short; let it finish
        try:
            demo.stop_factory()
            demo.stop_server()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if demo.dataset and status != 130:
        demo.epilogue()
    return status


SUBCOMMANDS = {"demo": ("run the whole system on this machine with an example dataset",
                        configure, run)}
