"""Malformed Slack interactivity requests are bad requests, not errors.

Served by a real started StatusServer (the daemon's listener), raw sockets.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import structlog
from pb_helpers import SIGNING_SECRET

from daemon.metrics import Health, Metrics
from daemon.status_server import StatusServer
from playbooks.interactivity import sign_request, verify_signature

NOW = 1_700_000_000.0


@pytest.mark.parametrize("stamp", ["9" * 400, "-" + "9" * 400, "1e400", "+1700000000",
                                   "1_700_000_000", "\u0661\u0667\u0660\u0660", "nan", ""])
def test_a_malformed_timestamp_fails_verification(stamp: str) -> None:
    body = b"payload=%7B%7D"
    headers = sign_request(SIGNING_SECRET.encode(), body, timestamp=int(NOW))
    headers["X-Slack-Request-Timestamp"] = stamp
    assert verify_signature(SIGNING_SECRET.encode(), headers, body, now=NOW) is False


def test_a_huge_timestamp_gets_401_and_no_error_log(engine_factory: Any) -> None:
    engine, events = engine_factory("routes: []\n", slack_route=None)
    server = StatusServer(Metrics(), Health(60.0), "127.0.0.1", 0,
                          {"/slack/interactions": engine.handle_slack_interaction},
                          status_pages=False, name="interactivity")
    server.start()
    body = b"payload=%7B%7D"
    request = (b"POST /slack/interactions HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n"
               b"X-Slack-Request-Timestamp: " + b"9" * 400 + b"\r\n"
               b"X-Slack-Signature: v0=" + b"0" * 64 + b"\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        with structlog.testing.capture_logs() as logs, \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.stop()
    assert answer.split(b" ", 2)[1] == b"401", answer
    assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs
    assert events.of("interaction_rejected")
