"""Input topics read through their configured formats, by the daemon, on a real broker.

A KServe-logger topic (CloudEvents in binary mode: the attributes are Kafka
headers) and a CloudTrail topic are configured next to the contract topics;
real kafka-python producers write them, the daemon (the same code as
``mlwatchd run``) reads them, and its findings and dead letters are read back.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from daemon.kafka_io import DLQ_HEADERS
from daemon.runtime import FORMAT_HEADER, ITEM_HEADER
from detectors.findings import decode_finding
from tests.formats.fixture_io import ROOT, read_fixture
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    make_settings,
    read_all,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

#: 2026-04-01T00:00:00Z: after the fixtures' times (a join's clock only moves forward).
T0 = 1_775_001_600.0
REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"


def _time(ts: float) -> bytes:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z").encode()


def _kserve_pair(n: int, ts: float, who: str, rows: int) -> list[tuple[bytes, list[Any]]]:
    """A logged request of ``rows`` instances and its response, as the logger writes them."""
    ce = [("ce_specversion", b"1.0"), ("ce_id", f"req-{n}".encode()),
          ("ce_source", b"http://localhost:9081/"), ("ce_inferenceservicename", b"fraud"),
          ("ce_namespace", b"prod"), ("ce_component", b"predictor")]
    meta = json.dumps({"X-Forwarded-User": [who]}).encode()
    request = (orjson.dumps({"instances": [[float(n % 7), 1.0, 2.0, float(r)]
                                           for r in range(rows)]}),
               [*ce, ("ce_type", REQUEST.encode()), ("ce_time", _time(ts)),
                ("ce_metadata", meta)])
    response = (orjson.dumps({"predictions": [n % 2] * rows}),
                [*ce, ("ce_type", RESPONSE.encode()), ("ce_time", _time(ts + 0.02))])
    return [request, response]


def _flood() -> list[tuple[bytes, list[Any]]]:
    """alice and mallory at ~6 requests/min for 10 min, then mallory 150 batches of 2 in 30 s."""
    out, n = [], 0
    for i in range(60):
        for who in ("alice", "mallory"):
            out += _kserve_pair(n, T0 + i * 10, who, 1)
            n += 1
    for i in range(150):
        out += _kserve_pair(n, T0 + 600 + i * 0.2, "mallory", 2)
        n += 1
    return out


def _send(broker: Any, topic: str, messages: list[tuple[bytes, list[Any], int | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for value, headers, timestamp_ms in messages:
        producer.send(topic, value=value, headers=headers, timestamp_ms=timestamp_ms)
    producer.flush()
    producer.close()


def test_kserve_and_cloudtrail_topics_give_findings_and_dead_letters_beside_the_contract(
        broker: Any) -> None:
    kserve, trail = unique("kserve.logs"), unique("aws.cloudtrail")
    broker.create_topics([kserve, trail])
    settings = make_settings(
        broker,
        input={"max_age_s": None, "formats": {
            kserve: {"format": "kserve", "options": {"principal_headers": ["x-forwarded-user"]}},
            trail: {"format": "cloudtrail", "options": {"training_buckets": ["ml-training-data"]}},
        }},
        detectors={"access.privilege_grant": {}},
    )
    _, fixture = read_fixture(next((ROOT / "kserve").glob("*.jsonl")))
    kserve_messages = [(m.value, m.headers, m.timestamp_ms) for m in fixture]
    kserve_messages += [(value, headers, None) for value, headers in _flood()]
    _send(broker, kserve, kserve_messages)
    _, trail_fixture = read_fixture(next((ROOT / "cloudtrail").glob("*.jsonl")))
    _send(broker, trail, [(trail_fixture[0].value, [], None)])
    contract_grant = orjson.dumps({"ts": T0, "actor": "olga", "action": "role.assign",
                                   "resource": "role:admin:olga", "outcome": "success"})
    _send(broker, settings.topics.audit, [(contract_grant, [], None)])
    total = len(kserve_messages) + 2

    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= total, 60), run.daemon.processed
        findings = [decode_finding(m.value) for m in
                    read_all(broker, settings.topics.findings, expect=4, settle_s=2)]
        dead = read_all(broker, settings.topics.dlq, expect=4, settle_s=1)

    flood = [f for f in findings if f.detector == "volume.principal_rate"]
    assert [f.entity.id for f in flood] == ["mallory"], findings
    source = flood[0].sources[0]
    assert source.topic == kserve and source.item in (0, 1), "the event inside its batch"

    grants = {(f.entity.id, f.sources[0].topic, f.sources[0].item): f for f in findings
              if f.detector == "access.privilege_grant" and f.evidence.get("self_grant")}
    mallory = grants[("arn:aws:iam::111122223333:user/mallory", trail, 3)]
    assert mallory.severity == "critical" and mallory.sources[0].offset == 0
    olga = grants[("olga", settings.topics.audit, None)]
    assert olga.sources[0].partition == 0, "the contract topic's finding, unchanged"

    letters = [{k: v.decode() for k, v in m.headers} for m in dead]
    assert sorted((h[DLQ_HEADERS[0]], h[DLQ_HEADERS[3]], h[FORMAT_HEADER], h.get(ITEM_HEADER))
                  for h in letters) == sorted([
        (kserve, "not_json", "kserve", None),
        (kserve, "invalid_value", "kserve", None),
        (kserve, "missing_field", "kserve", None),
        (trail, "missing_field", "cloudtrail", "12"),
    ])
    trail_letter = next(m for m in dead if dict(m.headers)[FORMAT_HEADER] == b"cloudtrail")
    assert trail_letter.value == trail_fixture[0].value, "the message goes to the DLQ unchanged"

    offsets = committed(broker, settings.kafka.group_id)
    assert offsets[(kserve, 0)] == len(kserve_messages)
    assert offsets[(trail, 0)] == 1 and offsets[(settings.topics.audit, 0)] == 1


def test_a_kserve_request_pending_at_shutdown_joins_its_response_after_a_restart(
        broker: Any, tmp_path: Any) -> None:
    kserve = unique("kserve.logs")
    broker.create_topics([kserve])
    settings = make_settings(
        broker,
        input={"max_age_s": None, "formats": {kserve: {"format": "kserve"}}},
        state={"dir": str(tmp_path), "signing_key": "s" * 32},
    )
    request, response = _kserve_pair(1, T0, "alice", 3)
    _send(broker, kserve, [(*request, None)])
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= 1), run.daemon.processed
    assert committed(broker, settings.kafka.group_id)[(kserve, 0)] == 1

    _send(broker, kserve, [(*response, None)])
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= 1), run.daemon.processed
        formats = run.daemon.intake.formats
        stats = next(f.stats() for tp, f in formats.items() if tp.topic == kserve)
    assert stats["joined"] == 1 and stats["pending"] == 0, stats
    assert read_all(broker, settings.topics.dlq, expect=0, settle_s=0.5) == []
