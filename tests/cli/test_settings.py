"""Where the `floe` commands find the matchmaker and the token: options, then the environment,
then the client file; and the sentences for a bad certificate or a server that is no floe, and
the hints for an address without a scheme, a certificate not trusted, and http:// and https://
mixed up."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tests.pilot.live import LiveMatchmaker

from .support import as_user, run


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
    client.touch(mode=0o600)
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


@pytest.fixture
def tls_matchmaker(tmp_path) -> Iterator[LiveMatchmaker]:
    """A matchmaker serving TLS with its self-signed certificate (`floe server --self-signed`)."""
    (tmp_path / "tls").mkdir()
    live = LiveMatchmaker(tmp_path / "tls", tls=True)
    live.start()
    yield live
    live.close()


def test_a_url_without_a_scheme_is_refused_with_how_to_write_it(capsys, monkeypatch):
    status, out, err = run(capsys, "datasets", "--url", "localhost:8080", "--token", "t")
    assert (status, out) == (1, "")
    assert err == ("floe datasets: --url localhost:8080 has no scheme; write "
                   "http://localhost:8080 (or https://localhost:8080 where the matchmaker serves "
                   "TLS)\n")
    monkeypatch.setenv("FLOE_URL", "127.0.0.1:8080")
    status, _, err = run(capsys, "status", "--token", "t")
    assert status == 1 and err.startswith("floe status: FLOE_URL=127.0.0.1:8080 has no scheme; "
                                          "write http://127.0.0.1:8080 ")


def test_a_certificate_not_trusted_says_to_give_its_ca(capsys, tls_matchmaker):
    status, _, err = run(capsys, "datasets", *as_user(tls_matchmaker))
    assert status == 1
    assert err == (f"floe datasets: cannot reach the matchmaker at {tls_matchmaker.url}: its "
                   "certificate is not trusted here (self-signed certificate); give --cacert (or "
                   "FLOE_CACERT) the CA certificate that signed it (a `floe server "
                   "--self-signed` writes its own beside its database, as "
                   "floe-selfsigned.crt)\n")
    status, _, err = run(capsys, "datasets", *as_user(tls_matchmaker), "--cacert",
                         str(tls_matchmaker.cacert))
    assert status == 0, err


def test_http_to_a_tls_matchmaker_and_https_to_a_plain_one_say_which_to_write(
        capsys, matchmaker, tls_matchmaker):
    tls_as_plain = tls_matchmaker.url.replace("https://", "http://")
    status, _, err = run(capsys, "datasets", *as_user(tls_matchmaker), "--url", tls_as_plain)
    assert status == 1
    assert err == (f"floe datasets: cannot reach the matchmaker at {tls_as_plain}: it closed the "
                   f"connection without an answer: if it serves TLS, write "
                   f"{tls_matchmaker.url}\n")
    plain_as_tls = matchmaker.url.replace("http://", "https://")
    status, _, err = run(capsys, "datasets", *as_user(matchmaker), "--url", plain_as_tls)
    assert status == 1
    assert err == (f"floe datasets: cannot reach the matchmaker at {plain_as_tls}: it does not "
                   f"speak TLS: if it is a plain http:// server, write {matchmaker.url}\n")
