"""The pilot's matchmaker client against a real matchmaker: one kept-alive connection, reopened
when the server closed it, TLS with the server's own certificate, the matchmaker's sentences
for refusals, and `Unreachable` for everything worth trying again later."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from floe.config.resources import GIB, Slot
from floe.pilot.client import Matchmaker, MatchmakerSettingError, Unreachable

from .live import LiveMatchmaker


def test_requests_share_one_kept_alive_connection(matchmaker: LiveMatchmaker):
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    assert client.call("GET", "/health").status == 200
    first = client._connection.sock.getsockname()
    assert client.call("GET", "/health").status == 200
    assert client._connection.sock.getsockname() == first


def test_a_connection_the_restarted_server_closed_is_reopened(matchmaker: LiveMatchmaker):
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    assert client.call("GET", "/health").status == 200
    matchmaker.stop()
    matchmaker.start()
    assert client.call("GET", "/health").status == 200


def test_a_stopped_matchmaker_is_unreachable_not_an_error(matchmaker: LiveMatchmaker):
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    matchmaker.stop()
    with pytest.raises(Unreachable, match=r"cannot reach the matchmaker at http://127\.0\.0\.1"):
        client.call("GET", "/health")


def test_a_refusal_comes_back_with_the_matchmakers_sentence(matchmaker: LiveMatchmaker):
    client = Matchmaker(matchmaker.url, matchmaker.pilot_token())
    reply = client.ask(999, Slot(cpus=1, memory=GIB, disk=GIB))
    assert reply.status == 403
    assert reply.error.startswith("a pilot token only registers its pilot")
    pilot = client.register(host="node1", batch_system="none", batch_id="", version="test",
                            resources={}).data["pilot_id"]
    assert client.sign_off(pilot, "idle", "no work").ok
    reply = client.ask(pilot, Slot(cpus=1, memory=GIB, disk=GIB))
    assert reply.status == 404
    assert reply.error.startswith(f"pilot {pilot} has ended (the matchmaker counted it lost, "
                                  "or it signed off)")


def test_an_unknown_token_is_refused_at_registration(matchmaker: LiveMatchmaker):
    client = Matchmaker(matchmaker.url, "floe_p_nonsense")
    reply = client.register(host="node1", batch_system="none", batch_id="", version="test",
                            resources={})
    assert reply.status == 401
    assert "token" in reply.error


def test_tls_with_the_servers_certificate_as_cacert(tmp_path):
    (tmp_path / "tls").mkdir()
    live = LiveMatchmaker(tmp_path / "tls", tls=True)
    live.start()
    try:
        client = Matchmaker(live.url, live.pilot_token(), cacert=str(live.cacert))
        reply = client.register(host="node1", batch_system="none", batch_id="",
                                version="test", resources={})
        assert reply.status == 201
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            Matchmaker(live.url, "floe_p_x").call("GET", "/health")
    finally:
        live.close()


@pytest.mark.parametrize("url", ["floe.example.org", "ftp://floe.example.org", "http://"])
def test_a_url_that_is_not_http_is_refused_with_an_example(url):
    with pytest.raises(MatchmakerSettingError, match="expected an http:// or https:// URL"):
        Matchmaker(url)


def test_a_cacert_that_is_not_pem_is_refused_naming_it(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(MatchmakerSettingError, match=f"--cacert {bad}: cannot load it"):
        Matchmaker("https://floe.example.org", cacert=str(bad))


def test_a_request_closed_after_a_wait_is_not_sent_again_but_unreachable(tmp_path):
    """A kept connection closed under a request at once was closed before it (the request goes
    again, on a new one); one closed after a wait (a held ask that a keep-alive load balancer
    cut) was closed on it: sent again, it would be cut again, and the pilot would take twice the
    cut for its length. Here a peer answers the first request, keeps the connection, and closes
    it 1.5 s into the second; any request on a new connection is answered."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    connections: list[float] = []
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    def serve() -> None:
        with listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                connections.append(time.monotonic())
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    if len(connections) == 1:
                        conn.recv(65536)
                        time.sleep(1.5)

    threading.Thread(target=serve, daemon=True).start()
    client = Matchmaker(f"http://127.0.0.1:{port}", "floe_p_x")
    assert client.call("GET", "/health").status == 200
    with pytest.raises(Unreachable, match=r"closed connection without response|reset by peer"):
        client.call("POST", "/pilots/1/ask", {"hold": 20})
    assert len(connections) == 1
    assert client.call("GET", "/health").status == 200  # a new connection
    listener.close()
