"""The HTTP side of the Devin API simulator: a threading server for GETs.

The server knows nothing of the API. It turns each GET into a ``Request``,
asks a ``respond`` callable for the answer and writes it with keep-alive, so
that a client can reuse one socket. It counts and tracks its connections, so
that stopping it can close kept-alive ones too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from etl.simulator.responses import Response


@dataclass(frozen=True)
class Request:
    path: str
    raw_query: str  # still URL-encoded
    authorization: str | None

    @cached_property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)


# None as an answer means: close the connection without sending anything.
Respond = Callable[[Request], Response | None]
# The value of the Date header of the next response; None sends no Date header.
DateHeader = Callable[[], str | None]


class LoopbackServer(ThreadingHTTPServer):
    """Tracks open connections so that ``stop()`` can close kept-alive ones."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], respond: Respond, date_header: DateHeader
    ) -> None:
        self.respond = respond
        self.date_header = date_header
        self.accepted = 0
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client closed it first
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that hang up mid-response are part of the tests."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a client can reuse one socket
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server_version = "devin-api-simulator"
    sys_version = ""

    @property
    def loopback(self) -> LoopbackServer:
        return cast(LoopbackServer, self.server)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        authorization = self.headers.get("Authorization")
        request = Request(url.path, url.query, authorization)
        response = self.loopback.respond(request)
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def send_response(self, code: int, message: str | None = None) -> None:
        """Like the base class, but the Date header follows the server clock."""
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())
        date = self.loopback.date_header()
        if date is not None:
            self.send_header("Date", date)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks make thousands of requests."""
