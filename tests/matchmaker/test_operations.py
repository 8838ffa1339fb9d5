"""Running `floe server` as a service, on real server processes: SIGHUP reloads the settings
and the TLS certificate without stopping the server, web sessions survive a restart (and signing
out survives it too), and `floe server --check` says whether the server would start."""

from __future__ import annotations

import http.cookiejar
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from floe.matchmaker import tls
from tests.pilot.live import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def floe(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "floe.cli.main", *args], cwd=cwd, text=True,
                          capture_output=True, check=False, timeout=60)


class Server:
    """`floe server` on a database in `directory`, its output in `server.log`."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.db = directory / "floe.sqlite"
        self.log = directory / "server.log"
        self.port = free_port()
        self.options = options
        self.process: subprocess.Popen | None = None
        self.scheme = "https" if "--cert" in options else "http"

    def start(self) -> Server:
        started = self.said_so_far().count("serving:")
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "floe.cli.main", "server", "--db", str(self.db), "--port",
                 str(self.port), "--log-level", "info", *self.options],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.said().count("serving:") > started, 30, "the server to serve")
        return self

    def said(self) -> str:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the server exited: {self.said_so_far()}")
        return self.said_so_far()

    def said_so_far(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def health(self, context: ssl.SSLContext | None = None) -> dict:
        url = f"{self.scheme}://127.0.0.1:{self.port}/api/v1/health"
        with urllib.request.urlopen(url, timeout=10, context=context) as reply:
            return json.load(reply)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(30) == 0
        self.process = None


@pytest.fixture
def servers():
    made: list[Server] = []

    def make(directory: Path, *options: str) -> Server:
        made.append(Server(directory, *options))
        return made[-1]

    yield make
    for server in made:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def test_sighup_applies_reloadable_settings_and_names_those_that_wait_for_a_restart(
        servers, tmp_path):
    settings = tmp_path / "server.toml"
    settings.write_text('idle_wait = "30s"\n')
    server = servers(tmp_path, "--settings", str(settings)).start()
    settings.write_text('idle_wait = "5s"\naccess_log = "text"\ndurability = "normal"\n')
    server.process.send_signal(signal.SIGHUP)
    line = wait_for(lambda: re.search(r"SIGHUP: settings reloaded: .*", server.said()), 30,
                    "the reload to be logged").group(0)
    assert "idle_wait 30 -> 5" in line and "access_log 'off' -> 'text'" in line
    assert "waiting for a restart: durability" in line
    assert server.health()["status"] == "ok"
    wait_for(lambda: re.search(r" 127\.0\.0\.1 - GET /api/v1/health 200 \d+ [\d.]+ms",
                               server.said()), 10, "the access log's line")
    settings.write_text('idle_wait = "never"\n')
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: the settings were not reloaded, nothing changed" in server.said(),
             30, "the refusal to be logged")
    assert server.health()["status"] == "ok"
    server.stop()
    assert "matchmaker stopped" in server.said_so_far()


def test_sighup_serves_a_renewed_certificate_to_new_connections(servers, tmp_path):
    first = tmp_path / "first"
    cert, key = tls.self_signed(first, ["first.example"])
    served_cert, served_key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(cert, served_cert)
    shutil.copy(key, served_key)
    server = servers(tmp_path, "--cert", str(served_cert), "--key", str(served_key)).start()
    assert "first.example" in _served_certificate(server.port)
    renewed, renewed_key = tls.self_signed(tmp_path / "second", ["second.example"])
    shutil.copy(renewed, served_cert)
    shutil.copy(renewed_key, served_key)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: f"TLS certificate {served_cert} reloaded" in server.said(), 30,
             "the certificate to be reloaded")
    assert "second.example" in _served_certificate(server.port)
    context = ssl.create_default_context(cafile=str(served_cert))
    context.check_hostname = False
    assert server.health(context)["status"] == "ok"


def _served_certificate(port: int) -> str:
    """The names in the certificate the server shows a new connection."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    return str(x509.load_pem_x509_certificate(pem.encode()).subject)


class Browser:
    """urllib with a cookie jar, which can be copied (a stolen cookie)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def go(self, method: str, path: str, form: dict[str, str] | None = None
           ) -> tuple[int, str, dict[str, str]]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with self.opener.open(request, timeout=10) as reply:
                return reply.status, reply.read().decode(), dict(reply.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def sign_in(self, token: str) -> str:
        """Sign in; the CSRF token of the session's forms."""
        _, text, _ = self.go("GET", "/signin")
        status, text, _ = self.go("POST", "/signin", {
            "token": token, "next": "/", "csrf": CSRF_RE.search(text).group(1)})
        assert status == 303, text
        status, text, _ = self.go("GET", "/")
        assert status == 200 and "Sign out" in text, text
        return CSRF_RE.search(text).group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object) -> None:
        return None


def test_a_web_session_survives_a_restart_and_signing_out_survives_it_too(servers, tmp_path):
    made = floe("user", "add", "alice", "--db", str(tmp_path / "floe.sqlite"), "--json")
    token = json.loads(made.stdout)["token"]
    server = servers(tmp_path).start()
    browser = Browser(f"http://127.0.0.1:{server.port}")
    csrf = browser.sign_in(token)
    server.stop()
    server.start()
    status, text, _ = browser.go("GET", "/")
    assert status == 200 and "alice" in text and CSRF_RE.search(text).group(1) == csrf
    stolen = Browser(browser.base)
    for cookie in browser.jar:
        stolen.jar.set_cookie(cookie)
    status, _, headers = browser.go("POST", "/signout", {"csrf": csrf})
    assert status == 303 and headers["Location"] == "/signin?why=signedout"
    server.stop()
    server.start()
    status, _, headers = stolen.go("GET", "/")
    assert status == 303 and headers["Location"].startswith("/signin?next=")


def test_check_passes_on_a_usable_setup_and_prints_what_it_checked(tmp_path):
    db = tmp_path / "floe.sqlite"
    assert floe("user", "add", "root", "--admin", "--db", str(db)).returncode == 0
    done = floe("server", "--check", "--db", str(db), "--port", str(free_port()))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("floe server --check: the server would start")
    assert "schema version" in done.stdout and "quick check passed" in done.stdout
    assert "is free" in done.stdout


def _garbage_database(tmp_path: Path) -> list[str]:
    (tmp_path / "floe.sqlite").write_bytes(b"not a database at all" * 100)
    return []


def _missing_key(tmp_path: Path) -> list[str]:
    cert, _ = tls.self_signed(tmp_path / "tls")
    return ["--cert", str(cert), "--key", str(tmp_path / "missing.key")]


def _bad_settings(tmp_path: Path) -> list[str]:
    (tmp_path / "server.toml").write_text('trusted_proxies = ["proxy.example"]\n')
    return ["--settings", str(tmp_path / "server.toml")]


def _unwritable_log(tmp_path: Path) -> list[str]:
    (tmp_path / "server.toml").write_text(
        f'audit_log_file = "{tmp_path / "no" / "such" / "dir" / "audit.log"}"\n')
    return ["--settings", str(tmp_path / "server.toml")]


@pytest.mark.parametrize(("spoil", "said"), [
    (_garbage_database, "is not an SQLite database"),
    (_missing_key, "cannot load the TLS certificate"),
    (_bad_settings, "trusted_proxies[0]: 'proxy.example' is not an address or network"),
    (_unwritable_log, "audit_log_file: cannot append to"),
])
def test_check_fails_with_one_sentence_naming_the_problem(tmp_path, spoil, said):
    options = spoil(tmp_path)
    done = floe("server", "--check", "--db", str(tmp_path / "floe.sqlite"), "--port",
                str(free_port()), *options)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("floe server --check: ") and said in done.stderr, done.stderr


def test_check_fails_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = floe("server", "--check", "--db", str(tmp_path / "floe.sqlite"), "--port",
                    str(port))
    assert done.returncode == 1
    assert f"port {port} of 127.0.0.1 is in use" in done.stderr, done.stderr
    assert not (tmp_path / "floe.sqlite").exists()


def test_check_fails_when_another_server_holds_the_database(matchmaker):
    done = floe("server", "--check", "--db", str(matchmaker.db), "--port", str(free_port()))
    assert done.returncode == 1, done.stdout
    assert f"the database {matchmaker.db} is in use by another floe server (pid " in \
        done.stderr, done.stderr
    assert matchmaker.get("/datasets")["datasets"] == []  # the running one is untouched
