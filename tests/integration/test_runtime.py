"""The consumer runtime against a real broker, on both clients (kafka-python, confluent)."""

from __future__ import annotations

import orjson
import pytest

from daemon.kafka_io import DLQ_HEADERS
from detectors.findings import decode_finding
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    inference,
    make_settings,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


def _flood_stream():
    """Two principals at ~6/min for 10 minutes, then mallory sends 300 in 30 s."""
    events = []
    for i in range(60):
        for who in ("alice", "mallory"):
            events.append((who.encode(), inference(T0 + i * 10, who, i)))
    for i in range(300):
        events.append((b"mallory", inference(T0 + 600 + i * 0.1, "mallory", 1000 + i)))
    return events


def test_valid_events_produce_contract_findings_and_commit_everything(broker, client):
    settings = make_settings(broker, kafka={"client": client})
    stream = _flood_stream()
    produce(broker, settings.topics.inference, stream)
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(stream)), run.daemon.processed
        found = read_all(broker, settings.topics.findings, expect=1)
    assert len(found) == 1, "one flood, one finding (not one per event)"
    message = found[0]
    finding = decode_finding(message.value)
    assert message.key == b"mallory"
    assert finding.entity.id == "mallory" and finding.entity.type == "principal"
    assert finding.kind == "denial_of_service" and finding.detector == "volume.principal_rate"
    assert "AML.T0029" in finding.atlas
    assert finding.evidence["observed_count"] >= 30
    src = finding.sources[0]
    assert src.topic == settings.topics.inference and src.partition == 0
    raw = orjson.loads(message.value)
    assert set(raw) == {"finding_id", "ts", "detector", "kind", "severity", "entity", "model_id",
                        "summary", "evidence", "atlas", "sources"}
    assert raw["ts"].endswith("Z")
    offsets = committed(broker, settings.kafka.group_id)
    assert offsets[(settings.topics.inference, 0)] == len(stream)


BAD = [
    (b"k1", b"this is not json", "not_json"),
    (b"k2", b"[1, 2, 3]", "not_an_object"),
    (b"k3", orjson.dumps({"ts": T0, "model_id": "m", "request_id": "r", "features": [1.0],
                          "prediction": 1}), "missing_field"),
    (b"k4", orjson.dumps({"ts": T0, "model_id": "m", "request_id": "r", "principal": "p",
                          "features": "oops", "prediction": 1}), "wrong_type"),
    (b"k5", orjson.dumps({"ts": T0, "model_id": "m", "request_id": "r", "principal": "p",
                          "features": [1.0], "prediction": 1, "confidence": 7}), "invalid_value"),
    (b"k6", b'{"pad": "' + b"x" * 3000 + b'"}', "too_large"),
    (b"k7", None, "empty"),
]


def test_bad_messages_go_to_dlq_unchanged_with_headers_and_nothing_is_lost(broker, client):
    settings = make_settings(broker, kafka={"max_message_bytes": 2048, "client": client})
    good = [(b"alice", inference(T0 + i, "alice", i)) for i in range(50)]
    stream = []
    for i, (key, value, _) in enumerate(BAD):
        stream.extend(good[i * 7:(i + 1) * 7])
        stream.append((key, value))
    stream.extend(good[len(BAD) * 7:])
    produce(broker, settings.topics.inference, stream)
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(stream))
        dead = read_all(broker, settings.topics.dlq, expect=len(BAD))
    assert len(dead) == len(BAD)
    for message, (key, value, reason) in zip(dead, BAD, strict=True):
        headers = {k: v.decode() for k, v in message.headers}
        assert message.key == key and message.value == value, "dead letter must be unchanged"
        assert headers[DLQ_HEADERS[0]] == settings.topics.inference
        assert headers[DLQ_HEADERS[1]] == "0"
        assert stream[int(headers[DLQ_HEADERS[2]])] == (key, value)
        assert headers[DLQ_HEADERS[3]] == reason, headers
        assert headers[DLQ_HEADERS[4]]
    metrics = run.daemon.metrics
    assert metrics.dlq._value.get() == len(BAD)
    assert metrics.events.labels(settings.topics.inference)._value.get() == len(stream)
    assert committed(broker, settings.kafka.group_id)[(settings.topics.inference, 0)] == len(stream)


def test_events_of_all_three_topics_and_partitions_are_consumed(broker, client):
    settings = make_settings(broker, partitions=3, kafka={"client": client})
    audit = orjson.dumps({"ts": T0, "actor": "bob", "action": "dataset.read",
                          "resource": "dataset:x", "outcome": "success"})
    access = orjson.dumps({"ts": T0, "principal": "bob", "action": "login",
                           "outcome": "failure", "geo": {"country": "DE", "lat": 1, "lon": 2}})
    n = produce(broker, settings.topics.audit, [(f"p{i}".encode(), audit) for i in range(30)])
    n += produce(broker, settings.topics.access, [(f"p{i}".encode(), access) for i in range(30)])
    n += produce(broker, settings.topics.inference,
                 [(f"p{i}".encode(), inference(T0, f"p{i}", i)) for i in range(30)])
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= n)
    offsets = committed(broker, settings.kafka.group_id)
    assert sum(offsets.values()) == n
    assert run.daemon.metrics.dlq._value.get() == 0
    assert type(run.daemon._consumer).__module__.startswith(
        "daemon.kafka_confluent" if client == "confluent" else "kafka."), "the chosen client ran"
