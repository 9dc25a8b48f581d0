"""``mlwatchd run`` as a real process: SIGTERM, kill -9, a broker that is not there yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from daemon.kafka_io import DLQ_HEADERS
from daemon.lab.broker import EmbeddedBroker, free_port
from tests.integration.kafka_helpers import committed, make_settings, produce, read_all, wait_for

pytestmark = pytest.mark.integration

MAX_POLL = 500


def _env(settings) -> dict[str, str]:
    """Configure the process through MLWATCHD_ variables only (the contract's overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWATCHD_")}
    env.update({
        "MLWATCHD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "MLWATCHD_KAFKA__GROUP_ID": settings.kafka.group_id,
        "MLWATCHD_KAFKA__CLIENT": settings.kafka.client,
        "MLWATCHD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MLWATCHD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "MLWATCHD_KAFKA__MAX_POLL_RECORDS": str(MAX_POLL),
        "MLWATCHD_KAFKA__RECONNECT_BACKOFF_MAX_S": "1",
        "MLWATCHD_OBSERVABILITY__HTTP_PORT": "0",
    })
    for name in ("inference", "audit", "access", "findings", "dlq"):
        env[f"MLWATCHD_TOPICS__{name.upper()}"] = getattr(settings.topics, name)
    return env


def _start(settings, stderr_path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run"],
        env=_env(settings), stdout=subprocess.DEVNULL, stderr=open(stderr_path, "wb"),
    )


def _bad_stream(n: int):
    # Every message is invalid, so each leaves one visible trace: its dead letter.
    return [(f"k{i}".encode(), f"not json {i}".encode()) for i in range(n)]


def _dlq_offsets(broker, settings, expect):
    letters = read_all(broker, settings.topics.dlq, expect=expect, timeout_s=60)
    return Counter(int(dict(m.headers)[DLQ_HEADERS[2]]) for m in letters)


def test_sigterm_drains_commits_and_exits_zero(broker, tmp_path, client):
    settings = make_settings(broker, kafka={"client": client})
    n = produce(broker, settings.topics.inference, _bad_stream(30_000))
    proc = _start(settings, tmp_path / "stderr.log")
    group, topic = settings.kafka.group_id, settings.topics.inference
    assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) > 2 * MAX_POLL, 60)
    proc.send_signal(signal.SIGTERM)  # mid-stream
    assert proc.wait(timeout=30) == 0
    stopped_at = committed(broker, group)[(topic, 0)]
    seen = _dlq_offsets(broker, settings, expect=stopped_at)
    # Everything processed was committed and nothing committed was skipped.
    assert sorted(seen) == list(range(stopped_at)), "dead letters == committed offsets exactly"
    assert max(seen.values()) == 1
    log = (tmp_path / "stderr.log").read_text()
    assert '"daemon_stopped"' in log
    assert '"gc_tuned"' in log, "mlwatchd run freezes its start-up heap (issue #16)"
    assert stopped_at <= n


def test_kill_9_then_restart_skips_nothing_and_redelivers_at_most_one_batch(
        broker, tmp_path, client):
    settings = make_settings(broker, kafka={"client": client})
    n = produce(broker, settings.topics.inference, _bad_stream(20_000))
    group, topic = settings.kafka.group_id, settings.topics.inference
    proc = _start(settings, tmp_path / "first.log")
    assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) > 2 * MAX_POLL, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = committed(broker, group)[(topic, 0)]
    assert killed_at < n, "killed mid-stream"
    proc = _start(settings, tmp_path / "second.log")
    try:
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == n, 90)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    seen = _dlq_offsets(broker, settings, expect=n)
    assert set(seen) == set(range(n)), "no event skipped across the kill"
    redelivered = sum(c - 1 for c in seen.values())
    assert redelivered <= MAX_POLL, f"{redelivered} redelivered, more than one batch"


def test_broker_unreachable_at_start_is_retried_then_consumed(tmp_path, client):
    port = free_port()
    with EmbeddedBroker() as scratch:  # only to name fresh topics and a group
        settings = make_settings(scratch, kafka={"client": client})
    settings.kafka.bootstrap_servers = f"127.0.0.1:{port}"  # nothing listens there yet
    log_path = tmp_path / "stderr.log"
    proc = _start(settings, log_path)
    try:
        assert wait_for(lambda: "kafka_unreachable" in log_path.read_text(), 30)
        time.sleep(1.5)
        assert proc.poll() is None, "the daemon must keep trying, not die"
        with EmbeddedBroker(port=port) as late:
            late.create_topics([getattr(settings.topics, name) for name in
                                ("inference", "audit", "access", "findings", "dlq")])
            n = produce(late, settings.topics.inference, _bad_stream(100))
            assert wait_for(lambda: committed(late, settings.kafka.group_id)
                            .get((settings.topics.inference, 0), 0) == n, 60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert '"kafka_connected"' in log_path.read_text()
