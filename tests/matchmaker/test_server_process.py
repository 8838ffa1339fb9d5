"""`floe server` as a real process: defaults, TLS with a self-signed certificate, admin commands
on its database while it runs, and a clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def floe(*args: str, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "floe.cli.main", *args], cwd=cwd, text=True,
                          capture_output=True, check=check, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, process: subprocess.Popen) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {process.stdout.read()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("the server did not start")


@pytest.fixture
def served(tmp_path):
    processes = []

    def start(*args: str) -> tuple[int, subprocess.Popen]:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "floe.cli.main", "server", "--port", str(port), *args],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(process)
        wait_for(port, process)
        return port, process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_default_database_lives_under_var(served, tmp_path):
    port, process = served()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=10) as reply:
        assert json.load(reply)["status"] == "ok"
    assert (tmp_path / "var" / "floe.sqlite").exists()
    # It holds every token's hash: this account's alone, whatever the umask, WAL and all.
    made = {path.name: oct(stat.S_IMODE(path.stat().st_mode))
            for path in (tmp_path / "var").glob("floe.sqlite*")}
    assert {made[name] for name in ("floe.sqlite", "floe.sqlite-wal", "floe.sqlite-shm")} == \
        {"0o600"}
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_sigterm_stops_the_server_with_a_line_saying_the_database_was_closed(served, tmp_path):
    db = tmp_path / "floe.sqlite"
    _, process = served("--db", str(db))
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    log = process.stdout.read()
    assert "SIGTERM received: stopping the matchmaker" in log
    assert log.rstrip().endswith(f"matchmaker stopped: its state saved, database {db} closed "
                                 "cleanly")


def test_self_signed_tls_serves_https_that_trusts_its_own_certificate(served, tmp_path):
    port, _ = served("--self-signed", "--db", str(tmp_path / "db" / "floe.sqlite"))
    cert = tmp_path / "db" / "floe-selfsigned.crt"
    assert cert.exists() and (tmp_path / "db" / "floe-selfsigned.key").stat().st_mode & 0o077 == 0
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/health", context=context,
                                timeout=10) as reply:
        assert json.load(reply)["status"] == "ok"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1/health", timeout=10)


def test_user_added_while_the_server_runs_can_use_its_token(served, tmp_path):
    db = tmp_path / "floe.sqlite"
    port, _ = served("--db", str(db))
    made = json.loads(floe("user", "add", "alice", "--db", str(db), "--json").stdout)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/whoami",
                                     headers={"Authorization": f"Bearer {made['token']}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.load(reply)["user"] == "alice"


@pytest.mark.parametrize("command", [("user", "add", "alice"), ("site", "add", "site-a"),
                                     ("user", "token", "alice"), ("site", "token", "site-a")])
def test_a_printed_token_is_alone_on_stdout_so_that_a_redirect_makes_a_token_file(tmp_path,
                                                                                   command):
    db = str(tmp_path / "floe.sqlite")
    if command[1] == "token":  # it must be there to get a new token
        floe(command[0], "add", command[2], "--db", db)
    made = floe(*command, "--db", db)
    assert made.stdout.count("\n") == 1 and made.stdout.startswith("floe_")
    assert len(made.stdout.split()) == 1
    assert "(shown only now" in made.stderr


def test_admin_commands_explain_their_errors(tmp_path):
    db = str(tmp_path / "floe.sqlite")
    floe("user", "add", "alice", "--db", db)
    again = floe("user", "add", "alice", "--db", db, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = floe("user", "add", "no spaces", "--db", db, check=False)
    assert bad.returncode == 1 and "is not valid" in bad.stderr
    missing = floe("site", "token", "nowhere", "--db", db, check=False)
    assert missing.returncode == 1 and "floe site add nowhere" in missing.stderr
    # Named as `floe priority` names a priority out of range: the argument, the bound, the value.
    share = floe("user", "share", "alice", "0", "--db", db, check=False)
    assert (share.returncode, share.stderr) == (1, "floe user: share: must be greater than 0 "
                                                   "and at most 1,000,000, got 0\n")


def test_a_bad_settings_file_stops_the_server_with_the_reason(tmp_path):
    settings = tmp_path / "server.toml"
    settings.write_text("heartbeat_timeout = \"soon\"\n")
    result = floe("server", "--settings", str(settings), check=False)
    assert result.returncode == 1
    assert "heartbeat_timeout" in result.stderr and "duration" in result.stderr


def test_a_port_in_use_is_one_sentence_naming_the_fix(served, tmp_path):
    port, _ = served("--db", str(tmp_path / "one.sqlite"))
    second = floe("server", "--port", str(port), "--db", str(tmp_path / "two.sqlite"),
                  check=False)
    assert second.returncode == 1
    assert f"floe server: port {port} of 127.0.0.1 is in use" in second.stderr
    assert "--port" in second.stderr
    # Refused before anything else: no database opened, nothing announced as ready.
    assert second.stdout == "" and "ready" not in second.stderr
    assert not (tmp_path / "two.sqlite").exists()


def test_adding_a_user_to_a_file_that_does_not_exist_says_so(tmp_path):
    made = floe("user", "add", "erin", "--db", str(tmp_path / "elsewhere.sqlite"))
    assert "did not exist; created a new matchmaker database" in made.stderr
    # It holds every token's hash: this account's alone, whatever the umask.
    assert stat.S_IMODE((tmp_path / "elsewhere.sqlite").stat().st_mode) == 0o600
    again = floe("user", "add", "fred", "--db", str(tmp_path / "elsewhere.sqlite"))
    assert "did not exist" not in again.stderr


@pytest.mark.parametrize("command", [("user", "add", "bob", "--admin"), ("site", "add", "s1"),
                                     ("site", "pilot-token", "s1"), ("user", "token", "bob")])
def test_an_admin_command_makes_no_database_but_where_add_is_told_to(tmp_path, command):
    """Run from another directory than the server's, the default file is not there: a user or
    site added to a new one would be unknown to the server, and its tokens refused as unknown.
    Only `add` with --db naming the file makes one; nothing else looks at a file that is not
    there."""
    refused = floe(*command, check=False, cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    fix = " (--db var/floe.sqlite makes a new, empty database there)" if "add" in command else ""
    assert refused.stderr == (f"floe {command[0]}: {tmp_path / 'var' / 'floe.sqlite'} does not "
                              f"exist: give --db the file `floe server` uses{fix}\n")
    named = floe(*command, "--db", str(tmp_path / "named.sqlite"), check=False, cwd=tmp_path)
    assert named.returncode == (0 if "add" in command else 1)
    assert (tmp_path / "named.sqlite").exists() == ("add" in command)
    assert not (tmp_path / "var").exists()


def pilot_registered(port: int, db: Path) -> None:
    """A site, a pilot token and a registered pilot: the server then has state to save."""
    site = json.loads(floe("site", "add", "s1", "--db", str(db), "--json").stdout)
    token = json.loads(floe("site", "pilot-token", "s1", "--db", str(db), "--json").stdout)
    assert site["site"] == token["site"] == "s1"
    plain = floe("site", "pilot-token", "s1", "--db", str(db))  # `> pilot.token` holds it alone
    assert plain.stdout.startswith("floe_p_") and plain.stdout.count("\n") == 1
    assert "pilot token of site s1" in plain.stderr
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/pilots", data=json.dumps({"host": "n1"}).encode(),
        headers={"Authorization": f"Bearer {token['token']}",
                 "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 201


@pytest.mark.slow
def test_sigterm_stops_the_server_even_when_its_writer_process_does_not_answer(served, tmp_path):
    import psutil

    from floe.matchmaker.server import SHUTDOWN_GRACE
    from floe.matchmaker.storage.database import CLOSE_GRACE

    db = tmp_path / "floe.sqlite"
    port, process = served("--db", str(db))
    pilot_registered(port, db)
    (writer,) = psutil.Process(process.pid).children()
    writer.suspend()
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(SHUTDOWN_GRACE + 2 * CLOSE_GRACE + 10) == 0
    finally:
        if writer.is_running():
            writer.resume()
    log = process.stdout.read()
    assert "could not be saved within 10s: the database writer does not answer" in log
    assert "matchmaker stopped: its state in memory NOT saved, database" in log
    assert not writer.is_running()


def test_a_second_signal_while_the_server_stops_is_said_and_ignored(served, tmp_path):
    db = tmp_path / "floe.sqlite"
    port, process = served("--db", str(db))
    with socket.create_connection(("127.0.0.1", port)) as slow:
        # A request in flight that the shutdown waits for: its body never comes.
        slow.sendall(b"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                     b"Content-Type: application/json\r\n\r\n{")
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    log = process.stdout.read()
    assert "SIGTERM received again: the matchmaker is already stopping" in log
    assert "SIGINT received again" in log
    assert log.rstrip().endswith(f"database {db} closed cleanly")


def test_a_pilot_token_made_on_the_command_line_lets_a_pilot_register(served, tmp_path):
    db = tmp_path / "floe.sqlite"
    port, _ = served("--db", str(db))
    pilot_registered(port, db)
    bad = floe("site", "pilot-token", "s1", "--db", str(db), "--lifetime", "soon", check=False)
    assert (bad.returncode, bad.stderr) == (
        1, "floe site: --lifetime: expected a duration like \"2h30m\", got 'soon'\n")
