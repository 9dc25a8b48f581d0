"""The HTTP server of /metrics, /healthz, /readyz and the Slack interactivity route.

One small server class serves two listeners: the status pages (metrics and
health, for the scraper and the kubelet) and, on its own port when
``observability.interactivity_port`` is set, only the POST routes (Slack's
button clicks, which can be exposed to Slack without exposing metrics).
Connections are capped in total and per client, and each request must
arrive within one deadline (slowloris).
"""

from __future__ import annotations

import errno
import io
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from daemon.metrics import Health, Metrics

__all__ = ["StatusPortInUse", "StatusServer"]

log = structlog.get_logger("mlwatchd.status_server")

#: Largest POST body accepted (Slack interactivity payloads are a few KiB).
_MAX_POST_BYTES = 64 * 1024

class _DeadlineSocketReader(io.RawIOBase):
    """Reads a socket until one deadline for the whole request, not per ``recv``.

    A per-``recv`` timeout alone lets a client trickle one byte every few
    seconds and hold a worker for ever (slowloris); this bounds the request.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        # One request per connection (HTTP/1.0 default), read under one deadline.
        # The makefile() reader is closed, or it would keep the socket's fd open.
        self.rfile.close()
        deadline = time.monotonic() + self.server.request_timeout_s
        self.rfile = io.BufferedReader(_DeadlineSocketReader(self.connection, deadline))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self.server.status_pages:
            self._send(404, b"not found\n")
        elif path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.server.health.live()
            self._send(200 if ok else 503, why.encode() + b"\n")
        elif path == "/readyz":
            h = self.server.health
            self._send(200 if h.ready else 503, h.reason.encode() + b"\n")
        else:
            self._send(404, b"not found\n")

    def _body_length(self) -> tuple[int, bytes] | int:
        """The declared body length, or (status, reason) to refuse before reading."""
        if self.headers.get("Transfer-Encoding") is not None:
            return 411, b"Content-Length required (no chunked bodies)\n"
        declared = self.headers.get_all("Content-Length") or []
        if not declared:
            return 411, b"Content-Length required\n"
        if len(set(declared)) != 1:
            return 400, b"conflicting Content-Length\n"
        raw = declared[0].strip()
        # isdigit: no sign, no spaces, no "1_000"; the length cap bounds int() too.
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            return 400, b"bad Content-Length\n"
        length = int(raw)
        if length > self.server.max_body_bytes:
            return 413, b"request too large\n"
        return length

    def do_POST(self) -> None:
        handler = self.server.post_routes.get(self.path.split("?", 1)[0])
        if handler is None:
            self._send(404, b"not found\n")
            return
        length = self._body_length()
        if isinstance(length, tuple):
            self._send(*length)
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self._send(400, b"body shorter than Content-Length\n")
            return
        try:
            code, answer = handler({k.lower(): v for k, v in self.headers.items()}, body)
        except Exception as exc:  # never let a handler bug kill the status server
            log.error("post_handler_failed", path=self.path, error=f"{type(exc).__name__}: {exc}")
            code, answer = 500, b"internal error\n"
        self._send(code, answer, "application/json" if answer[:1] in (b"{", b"[") else
                   "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        # The read deadline may be nearly spent: the answer gets its own bound.
        self.connection.settimeout(self.server.request_timeout_s)
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log


#: Sent, without reading anything, to a connection over the caps.
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 5\r\nConnection: close\r\nRetry-After: 1\r\n\r\nbusy\n")


class _Server(ThreadingHTTPServer):
    """A thread per connection, but a bounded number of them.

    At most ``max_connections`` requests are handled at once and at most
    ``max_per_client`` from one address, so idle or slow clients from one
    host cannot starve the kubelet's probes or the scraper; a connection over
    either cap gets a 503 at once and is closed. Each request must arrive
    within ``request_timeout_s``.
    """

    daemon_threads = True
    request_queue_size = 128
    metrics: Metrics
    health: Health
    post_routes: dict[str, Any]
    status_pages: bool
    max_connections: int
    max_per_client: int
    request_timeout_s: float
    max_body_bytes: int

    def server_activate(self) -> None:
        super().server_activate()
        self._slots_lock = threading.Lock()
        self._active = 0
        self._per_client: dict[str, int] = {}

    def _take_slot(self, client: str) -> bool:
        with self._slots_lock:
            if (self._active >= self.max_connections
                    or self._per_client.get(client, 0) >= self.max_per_client):
                return False
            self._active += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
            return True

    def _free_slot(self, client: str) -> None:
        with self._slots_lock:
            self._active -= 1
            left = self._per_client.pop(client, 1) - 1
            if left:
                self._per_client[client] = left

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        if not self._take_slot(client):
            try:  # never block the accept loop on a client that does not read
                request.setblocking(False)
                request.send(_BUSY)
                request.recv(65536)  # what already arrived: closing unread data resets
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            thread = threading.Thread(target=self._serve_one,
                                      args=(request, client_address, client), daemon=True)
            thread.start()
        except BaseException:
            self._free_slot(client)
            self.shutdown_request(request)
            raise

    def _serve_one(self, request: Any, client_address: Any, client: str) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._free_slot(client)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr.

        A scraper that gives up mid-answer (a timeout on a busy replica)
        breaks the pipe, and a client too slow to send its request is cut
        off; that is the client's business, not an error here.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("status_client_gone", client=str(client_address[0]),
                      error=type(exc).__name__)
            return
        log.warning("status_request_failed", client=str(client_address[0]),
                    error=f"{type(exc).__name__}: {exc}")


class StatusPortInUse(OSError):
    """The status (or interactivity) port is taken, e.g. by another replica on this host."""


class StatusServer:
    """Serves metrics and health on ``host:port`` from a background thread.

    With ``status_pages=False`` it serves only ``post_routes`` (the Slack
    interactivity listener, which can be exposed to Slack without exposing
    metrics and health).
    """

    def __init__(self, metrics: Metrics, health: Health, host: str, port: int,
                 post_routes: dict[str, Any] | None = None, *, status_pages: bool = True,
                 max_connections: int = 32, max_per_client: int = 8,
                 request_timeout_s: float = 10.0, max_body_bytes: int = _MAX_POST_BYTES,
                 name: str = "status") -> None:
        """``post_routes``: path -> handler(headers, body) -> (status, body).

        Raises :class:`StatusPortInUse` when ``host:port`` is taken.
        """
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StatusPortInUse(
                    exc.errno, f"{name} port {host}:{port} is already in use "
                    "(another mlwatchd on this host? give each its own port, or 0 for any)",
                ) from None
            raise
        self._server.metrics = metrics
        self._server.health = health
        self._server.post_routes = dict(post_routes or {})
        self._server.status_pages = status_pages
        self._server.max_connections = max_connections
        self._server.max_per_client = max_per_client
        self._server.request_timeout_s = request_timeout_s
        self._server.max_body_bytes = max_body_bytes
        self._name = name
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"mlwatchd-{name}", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info(f"{self._name}_server_started", host=self._server.server_address[0],
                 port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
