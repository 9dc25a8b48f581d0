"""Prometheus metrics and the /metrics, /healthz, /readyz HTTP server."""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Health", "Metrics", "StatusServer"]

log = structlog.get_logger("mlwatchd.metrics")

#: Largest POST body accepted (Slack interactivity payloads are a few KiB).
_MAX_POST_BYTES = 64 * 1024


class Metrics:
    """The daemon's metrics, on a registry of its own (tests can make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("mlwatchd_events_consumed_total", "Events consumed",
                              ["topic"], registry=r)
        self.bad_events = Counter("mlwatchd_decode_errors_total",
                                  "Messages that were not valid events", ["topic", "reason"],
                                  registry=r)
        self.dlq = Counter("mlwatchd_dlq_messages_total",
                           "Messages written to the dead-letter topic",
                           registry=r)
        self.findings = Counter("mlwatchd_findings_total", "Findings emitted",
                                ["detector", "severity"], registry=r)
        self.detector_errors = Counter("mlwatchd_detector_errors_total",
                                       "Exceptions raised by detectors (event skipped for that "
                                       "detector)", ["detector"], registry=r)
        self.batch_seconds = Histogram(
            "mlwatchd_batch_processing_seconds", "Time to process one polled batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.batch_events = Histogram(
            "mlwatchd_batch_events", "Events per polled batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000), registry=r)
        self.commits = Counter("mlwatchd_commits_total", "Offset commits", ["result"], registry=r)
        self.lag = Gauge("mlwatchd_consumer_lag", "Highwater minus committed position",
                         ["topic", "partition"], registry=r)
        self.assigned = Gauge("mlwatchd_assigned_partitions", "Partitions assigned", registry=r)
        self.repartitioned = Counter("mlwatchd_repartitioned_total",
                                     "Inference events forwarded to the repartition topic",
                                     registry=r)
        self.repartition_duplicates = Counter(
            "mlwatchd_repartition_duplicates_total",
            "Repartitioned copies skipped because the model stage had seen them", registry=r)
        self.produce_retries = Counter("mlwatchd_produce_retries_total",
                                       "Retries of findings/DLQ produce after a broker error",
                                       registry=r)
        self.refused = Counter("mlwatchd_produce_refused_total",
                               "Records the producer or broker refused for good (too large, "
                               "invalid), not retried; outcome truncated: a cut-down dead "
                               "letter went instead, dropped: nothing did",
                               ["topic", "outcome"], registry=r)
        self.broker_reconnects = Counter("mlwatchd_broker_connect_failures_total",
                                         "Failed attempts to reach the Kafka cluster", registry=r)
        self.playbook_events = Counter("mlwatchd_playbook_events_total",
                                       "Response engine events (action_delivered, action_failed, "
                                       "incident_opened, ...)", ["event"], registry=r)
        self.detector_gauge = Gauge("mlwatchd_detector_state", "Detector state gauges "
                                    "(entities tracked, evictions, ...)",
                                    ["detector", "stat"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """What /healthz and /readyz report: the loop turns, and it has partitions."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.last_turn = time.monotonic()
        self.ready = False
        self.reason = "starting"

    def beat(self) -> None:
        self.last_turn = time.monotonic()

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_turn
        if idle > self.stall_after_s:
            return False, f"consumer loop stalled for {idle:.0f}s"
        return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.server.health.live()
            self._send(200 if ok else 503, why.encode() + b"\n")
        elif path == "/readyz":
            h = self.server.health
            self._send(200 if h.ready else 503, h.reason.encode() + b"\n")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        handler = self.server.post_routes.get(self.path.split("?", 1)[0])
        if handler is None:
            self._send(404, b"not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_POST_BYTES:
            self._send(413, b"request too large\n")
            return
        body = self.rfile.read(length)
        try:
            code, answer = handler({k.lower(): v for k, v in self.headers.items()}, body)
        except Exception as exc:  # never let a handler bug kill the status server
            log.error("post_handler_failed", path=self.path, error=f"{type(exc).__name__}: {exc}")
            code, answer = 500, b"internal error\n"
        self._send(code, answer, "application/json" if answer[:1] in (b"{", b"[") else
                   "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: Metrics
    health: Health
    post_routes: dict[str, Any]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr.

        A scraper that gives up mid-answer (a timeout on a busy replica)
        breaks the pipe; that is the client's business, not an error here.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            log.debug("status_client_gone", client=str(client_address[0]))
            return
        log.warning("status_request_failed", client=str(client_address[0]),
                    error=f"{type(exc).__name__}: {exc}")


class StatusServer:
    """Serves metrics and health on ``host:port`` from a background thread."""

    def __init__(self, metrics: Metrics, health: Health, host: str, port: int,
                 post_routes: dict[str, Any] | None = None) -> None:
        """``post_routes``: path -> handler(headers, body) -> (status, body)."""
        self._server = _Server((host, port), _Handler)
        self._server.metrics = metrics
        self._server.health = health
        self._server.post_routes = dict(post_routes or {})
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="mlwatchd-status", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("status_server_started", host=self._server.server_address[0], port=self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
