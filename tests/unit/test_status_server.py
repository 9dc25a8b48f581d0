"""/metrics, /healthz and /readyz over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

from daemon.metrics import Health, Metrics
from daemon.status_server import StatusServer


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_health_and_readiness():
    metrics, health = Metrics(), Health(stall_after_s=0.5)
    metrics.events.labels("ml.inference").inc(3)
    metrics.dlq.inc()
    server = StatusServer(metrics, health, "127.0.0.1", 0)
    server.start()
    try:
        code, body = _get(server.port, "/metrics")
        assert code == 200
        assert 'mlwatchd_events_consumed_total{topic="ml.inference"} 3.0' in body
        assert "mlwatchd_dlq_messages_total 1.0" in body
        assert _get(server.port, "/readyz")[0] == 503
        health.ready, health.reason = True, "consuming"
        assert _get(server.port, "/readyz") == (200, "consuming\n")
        health.beat()
        assert _get(server.port, "/healthz")[0] == 200
        health.last_turn -= 10  # the loop has not turned for 10 s
        code, body = _get(server.port, "/healthz")
        assert code == 503 and "stalled" in body
        assert _get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_a_scraper_that_hangs_up_is_not_a_traceback(capsys):
    server = StatusServer(Metrics(), Health(60.0), "127.0.0.1", 0)
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        server._server.handle_error(None, ("127.0.0.1", 40000))
    finally:
        server._server.server_close()
    assert "Traceback" not in capsys.readouterr().err
