"""Where the `floe` commands find the matchmaker and the token: options, then the environment,
then the client file; and the sentences for a bad certificate or a server that is no floe."""

from __future__ import annotations

import http.server
import threading

from tests.pilot.live import LiveMatchmaker

from .support import run


def test_the_environment_names_the_server_and_the_token(matchmaker: LiveMatchmaker, capsys,
                                                        monkeypatch):
    matchmaker.submit({"description": "seen through the environment", "jobs": 1,
                       "tasks": [{"name": "t", "modules": [{"command": "true"}]}]})
    monkeypatch.setenv("FLOE_URL", matchmaker.url)
    monkeypatch.setenv("FLOE_TOKEN", matchmaker.user_token)
    status, out, err = run(capsys, "datasets")
    assert status == 0, err
    assert "seen through the environment" in out


def test_the_client_file_does_when_the_environment_does_not(matchmaker: LiveMatchmaker, capsys,
                                                            monkeypatch, tmp_path):
    client = tmp_path / "client.toml"
    client.write_text(f'url = "{matchmaker.url}"\ntoken = "{matchmaker.user_token}"\n')
    monkeypatch.setenv("FLOE_CONFIG", str(client))
    assert run(capsys, "datasets")[0] == 0
    client.write_text(f'url = "{matchmaker.url}"\ntokn = "x"\n')
    status, _, err = run(capsys, "datasets")
    assert status == 1 and "unknown keys tokn" in err


def test_options_win_over_the_environment(matchmaker: LiveMatchmaker, capsys, monkeypatch):
    monkeypatch.setenv("FLOE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FLOE_TOKEN", "floe_u_wrong")
    status, _, err = run(capsys, "datasets", "--url", matchmaker.url, "--token",
                         matchmaker.user_token)
    assert status == 0, err


def test_a_certificate_that_cannot_be_read_is_one_sentence(capsys, tmp_path):
    status, _, err = run(capsys, "datasets", "--url", "https://127.0.0.1:9", "--token", "t",
                         "--cacert", str(tmp_path / "missing.pem"))
    assert status == 1 and "cannot use the CA certificate" in err
    assert "Traceback" not in err


def test_a_server_that_is_not_floe_is_named(capsys):
    class NotFloe(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFloe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, _, err = run(capsys, "datasets", "--url",
                             f"http://127.0.0.1:{server.server_address[1]}", "--token", "t")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 1 and "is not JSON: is it a floe matchmaker?" in err
