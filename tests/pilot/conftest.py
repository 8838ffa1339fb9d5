"""A real HTTP file server for the staging tests: GET serves a directory, PUT writes into it,
and paths under /flaky/ answer 503 to the first request for each file. (The matchmaker fixture
is in tests/conftest.py.)"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass
class FileServer:
    url: str
    directory: Path
    requests: list[str] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_state: FileServer

    def log_message(self, format: str, *args) -> None:
        """Quiet: the tests read `requests` instead."""

    def do_GET(self) -> None:
        self.server_state.requests.append(f"GET {self.path}")
        if self.path.startswith("/flaky/"):
            if self.server_state.requests.count(f"GET {self.path}") == 1:
                self.send_error(503, "try again")
                return
            self.path = self.path[len("/flaky"):]
        super().do_GET()

    def do_PUT(self) -> None:
        self.server_state.requests.append(f"PUT {self.path}")
        target = self.server_state.directory / self.path.lstrip("/")
        length = int(self.headers["Content-Length"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.rfile.read(length))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    directory = tmp_path / "served"
    directory.mkdir()
    state = FileServer(url="", directory=directory)
    handler = functools.partial(type("Handler", (_Handler,), {"server_state": state}),
                                directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()
