"""The status server against hostile clients: raw sockets on a real started StatusServer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.metrics import Health, Metrics
from daemon.status_server import StatusPortInUse, StatusServer

PATH = "/slack/interactions"


class _Recorder:
    """A POST route that records what reached it."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        self.bodies.append(body)
        return 200, b"ok\n"


@pytest.fixture
def route() -> _Recorder:
    return _Recorder()


@pytest.fixture
def server(route: _Recorder) -> Iterator[StatusServer]:
    health = Health(60.0)
    srv = StatusServer(Metrics(), health, "127.0.0.1", 0, {PATH: route},
                       max_connections=16, max_per_client=4, request_timeout_s=1.0,
                       max_body_bytes=4096)
    srv.start()
    yield srv
    srv.stop()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (raises socket.timeout if it does not)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _request(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    with _connect(port, source) as sock:
        sock.sendall(raw)
        return _answer(sock)


def _post(headers: str, body: bytes = b"") -> bytes:
    return f"POST {PATH} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


@pytest.mark.parametrize(("headers", "status"), [
    ("Content-Length: -1\r\n", 400),
    ("Content-Length: +12\r\n", 400),
    ("Content-Length: 1e3\r\n", 400),
    ("Content-Length: " + "9" * 400 + "\r\n", 400),
    ("Content-Length: 4\r\nContent-Length: 5\r\n", 400),
    ("", 411),
    ("Transfer-Encoding: chunked\r\n", 411),
    ("Content-Length: 300000000\r\n", 413),
])
def test_a_bad_content_length_is_refused_before_the_body_is_read(
        server: StatusServer, route: _Recorder, headers: str, status: int) -> None:
    # The client keeps its side open and sends a little body: the answer must
    # come without the server waiting for the body or for the client to close.
    with _connect(server.port) as sock:
        sock.sendall(_post(headers, b"payload=x"))
        started = time.monotonic()
        answer = _answer(sock)
    assert _status(answer) == status
    assert time.monotonic() - started < 0.9  # before the 1 s request deadline
    assert route.bodies == []


def test_a_good_post_reaches_its_route(server: StatusServer, route: _Recorder) -> None:
    answer = _request(server.port, _post("Content-Length: 9\r\n", b"payload=x"))
    assert _status(answer) == 200 and answer.endswith(b"ok\n")
    assert route.bodies == [b"payload=x"]


def test_a_body_shorter_than_declared_is_cut_off_at_the_deadline(
        server: StatusServer, route: _Recorder) -> None:
    with _connect(server.port) as sock:
        sock.sendall(_post("Content-Length: 100\r\n", b"payload=x"))
        started = time.monotonic()
        _answer(sock)  # closed by the server, not by us
        assert time.monotonic() - started < 3.0
    assert route.bodies == []


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline(server: StatusServer) -> None:
    # One byte every 0.2 s never trips a per-recv timeout; the request deadline (1 s) does.
    with _connect(server.port) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed, "the server kept a trickling client for 20 s"
        assert time.monotonic() - started < 3.0


def test_idle_clients_are_dropped_and_do_not_starve_health_checks(server: StatusServer) -> None:
    idle = [_connect(server.port) for _ in range(130)]  # connect and never send anything
    time.sleep(0.2)  # the accept loop has taken them all
    try:
        # A client from another address still gets its answer at once.
        started = time.monotonic()
        answer = _request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                          source="127.0.0.2")
        assert _status(answer) == 200 and time.monotonic() - started < 0.5
        # The connections over the caps were answered 503 and closed at once;
        # the ones admitted are closed when the request deadline (1 s) passes
        # (and a few more admitted then). Without a deadline _answer times out.
        for sock in idle:
            sock.settimeout(3.0)
        answers = [_answer(sock) for sock in idle]
        busy = sum(a.startswith(b"HTTP/1.0 503") for a in answers)
        assert busy >= 100, busy
        assert all(a == b"" or a.startswith(b"HTTP/1.0 503") for a in answers)
    finally:
        for sock in idle:
            sock.close()
    # ... and then the idle client's address is served again.
    answer = _request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(answer) == 200


def test_the_interactivity_listener_serves_no_metrics_and_status_port_no_posts(
        route: _Recorder) -> None:
    metrics, health = Metrics(), Health(60.0)
    inter = StatusServer(metrics, health, "127.0.0.1", 0, {PATH: route}, status_pages=False,
                         name="interactivity")
    status = StatusServer(metrics, health, "127.0.0.1", 0)
    inter.start()
    status.start()
    try:
        for path in ("/metrics", "/healthz", "/readyz"):
            raw = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            assert _status(_request(inter.port, raw)) == 404
            assert _status(_request(status.port, raw)) in (200, 503)
        post = _post("Content-Length: 9\r\n", b"payload=x")
        assert _status(_request(status.port, post)) == 404
        assert _status(_request(inter.port, post)) == 200
        assert route.bodies == [b"payload=x"]
    finally:
        inter.stop()
        status.stop()


def test_a_taken_port_is_a_clear_error(server: StatusServer) -> None:
    with pytest.raises(StatusPortInUse, match=f"status port 127.0.0.1:{server.port} is already"):
        StatusServer(Metrics(), Health(60.0), "127.0.0.1", server.port)


def test_run_with_a_taken_status_port_exits_2_with_one_line(
        server: StatusServer, tmp_path: Path) -> None:
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1'}\n"
        f"observability: {{http_port: {server.port}}}\n"
        "playbooks: {enabled: false}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == (f"mlwatchd: status port 127.0.0.1:{server.port} is already in use "
                         "(another mlwatchd on this host? give each its own port, or 0 for any)")
    assert "Traceback" not in proc.stderr


def test_the_daemon_serves_slack_callbacks_on_their_own_listener(tmp_path: Path) -> None:
    """observability.interactivity_port: callbacks there only, metrics and health not there."""
    import threading

    from daemon.response import build_response
    from daemon.runtime import Daemon
    from daemon.settings import load

    config = tmp_path / "mlwatchd.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1', reconnect_backoff_max_s: 0.2}\n"
        "observability: {http_port: 0, interactivity_port: 0}\n"
        f"playbooks: {{outbox_path: '{tmp_path / 'outbox.sqlite3'}', interactivity: "
        "{enabled: true, signing_secret: 'sign-me-0123456789'}}\n")
    settings = load(config)
    metrics = Metrics()
    daemon = Daemon(settings, alerter=build_response(settings, metrics), metrics=metrics)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while (daemon.status is None or daemon.interactions is None) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert daemon.status is not None and daemon.interactions is not None
        status, inter = daemon.status.port, daemon.interactions.port
        assert status != inter
        post = _post("Content-Length: 9\r\nX-Slack-Signature: v0=00\r\n"
                     "X-Slack-Request-Timestamp: 1\r\n", b"payload=x")
        assert _status(_request(inter, post)) == 401  # reached the engine: bad signature
        assert _status(_request(status, post)) == 404
        metrics_get = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _status(_request(inter, metrics_get)) == 404
        assert _status(_request(status, metrics_get)) == 200
    finally:
        daemon.request_stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
