"""OIP, LiteLLM and Kubernetes-audit topics read by the daemon on a real broker; OCSF out.

As tests/integration/test_input_formats_wired.py does for KServe and
CloudTrail: real kafka-python producers write each format (with the headers
the format reads: Seldon Core 2's ``x-request-id`` and the caller's
``x-forwarded-user`` for OIP), the daemon (the same code as ``mlwatchd run``)
reads them through ``input.formats``, and its findings and dead letters are
read back. With ``topics.ocsf`` set, every finding also comes out as an OCSF
1.8.0 Detection Finding that validates against the schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
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

#: 2026-04-01T00:00:00Z: after the fixtures' times.
T0 = 1_775_001_600.0
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "ocsf" /
                     "detection_finding-1.8.0.schema.json").read_text())

Message = tuple[bytes, list[tuple[str, bytes]], int | None]


def _send(broker: Any, topic: str, messages: list[Message]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for value, headers, timestamp_ms in messages:
        producer.send(topic, value=value, headers=headers, timestamp_ms=timestamp_ms)
    producer.flush()
    producer.close()


def _flood_times() -> list[tuple[str, float]]:
    """alice and mallory every 10 s for 10 min, then mallory 300 calls in 30 s."""
    calls = [(who, T0 + i * 10) for i in range(60) for who in ("alice", "mallory")]
    return calls + [("mallory", T0 + 600 + i * 0.1) for i in range(300)]


def _oip_pair(n: int, who: str, ts: float) -> list[Message]:
    """A Seldon Core 2 request (inputs topic) and its response (outputs topic), one stream."""
    rid = f"req-{n}".encode()
    request = orjson.dumps({"inputs": [{"name": "predict", "shape": [1, 3], "datatype": "FP64",
                                        "data": [float(n % 7), 1.0, 2.0]}]})
    response = orjson.dumps({"model_name": "fraud", "outputs": [
        {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [n % 2]}]})
    ms = int(ts * 1000)
    return [(request, [("x-request-id", rid), ("x-forwarded-user", who.encode())], ms),
            (response, [("x-request-id", rid)], ms + 20)]


def _litellm(n: int, who: str, ts: float) -> Message:
    payload = {
        "id": f"chatcmpl-{n}", "call_type": "acompletion", "status": "success",
        "model": "gpt-4o", "model_group": "gpt-4o", "prompt_tokens": 100 + n % 13,
        "completion_tokens": 20, "total_tokens": 120 + n % 13, "response_cost": 0.001,
        "startTime": ts, "endTime": ts + 0.8, "end_user": who, "cache_hit": False,
        "requester_ip_address": "10.20.0.5",
        "metadata": {"user_api_key_hash": "k" * 64, "user_api_key_team_id": "team-ml"},
        "messages": [{"role": "user", "content": f"secret prompt {n}"}],
        "response": {"choices": [{"message": {"content": "secret answer"}}]},
    }
    return orjson.dumps(payload), [], None


def _flooders(findings: list[Any], topic: str) -> list[str]:
    return [f.entity.id for f in findings
            if f.detector == "volume.principal_rate" and f.sources[0].topic == topic]


def test_oip_topic_with_seldon_headers_gives_a_rate_finding_and_dead_letters(broker: Any) -> None:
    oip = unique("seldon.fraud")
    broker.create_topics([oip])
    settings = make_settings(broker, input={"max_age_s": None, "formats": {
        oip: {"format": "oip", "options": {"principal_headers": ["x-forwarded-user"]}}}})
    _, fixture = read_fixture(next((ROOT / "oip").glob("*.jsonl")))
    messages = [(m.value, m.headers, m.timestamp_ms) for m in fixture]
    for n, (who, ts) in enumerate(_flood_times()):
        messages += _oip_pair(n, who, ts)
    _send(broker, oip, messages)

    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(messages), 60), run.daemon.processed
        findings = [decode_finding(m.value) for m in
                    read_all(broker, settings.topics.findings, expect=1, settle_s=2)]
        dead = read_all(broker, settings.topics.dlq, expect=1, settle_s=1)
        stats = next(f.stats() for tp, f in run.daemon.intake.formats.items() if tp.topic == oip)

    assert _flooders(findings, oip) == ["mallory"], findings
    assert stats["joined"] >= 420, stats  # every Seldon request met its response
    letters = [{k: v.decode() for k, v in m.headers} for m in dead]
    want = [(oip, f"{d['reason']}", "oip") for m in fixture
            for d in m.expect.get("dead_letters", [])]
    assert sorted((h[DLQ_HEADERS[0]], h[DLQ_HEADERS[3]], h[FORMAT_HEADER]) for h in letters) \
        == sorted(want)
    assert committed(broker, settings.kafka.group_id)[(oip, 0)] == len(messages)


def test_litellm_topic_gives_a_rate_finding_without_keeping_any_text(broker: Any) -> None:
    gateway = unique("litellm.spend")
    broker.create_topics([gateway])
    settings = make_settings(broker, input={"max_age_s": None, "formats": {
        gateway: {"format": "litellm"}}})
    _, fixture = read_fixture(next((ROOT / "litellm").glob("*.jsonl")))
    messages = [(m.value, m.headers, m.timestamp_ms) for m in fixture]
    messages += [_litellm(n, who, ts) for n, (who, ts) in enumerate(_flood_times())]
    _send(broker, gateway, messages)

    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(messages), 60), run.daemon.processed
        raw = read_all(broker, settings.topics.findings, expect=1, settle_s=2)
        dead = read_all(broker, settings.topics.dlq, expect=0, settle_s=0.5)

    findings = [decode_finding(m.value) for m in raw]
    assert _flooders(findings, gateway) == ["mallory"], findings
    assert all(b"secret prompt" not in m.value and b"secret answer" not in m.value for m in raw)
    want = sorted(d["reason"] for m in fixture for d in m.expect.get("dead_letters", []))
    assert sorted(dict(m.headers)[DLQ_HEADERS[3]].decode() for m in dead) == want
    assert committed(broker, settings.kafka.group_id)[(gateway, 0)] == len(messages)


def test_k8s_audit_self_grant_is_a_finding_and_also_an_ocsf_record_on_the_ocsf_topic(
        broker: Any) -> None:
    audit = unique("k8s.audit")
    ocsf = unique("siem.ocsf")
    broker.create_topics([audit, ocsf])
    settings = make_settings(
        broker, topics={"ocsf": ocsf},
        input={"max_age_s": None, "formats": {audit: {"format": "k8s-audit"}}},
        detectors={"access.privilege_grant": {}})
    _, fixture = read_fixture(next((ROOT / "k8s-audit").glob("*.jsonl")))
    messages = [(m.value, m.headers, m.timestamp_ms) for m in fixture]
    _send(broker, audit, messages)

    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(messages), 60), run.daemon.processed
        findings = [decode_finding(m.value) for m in
                    read_all(broker, settings.topics.findings, expect=1, settle_s=2)]
        records = read_all(broker, ocsf, expect=len(findings), settle_s=1)
        dead = read_all(broker, settings.topics.dlq, expect=1, settle_s=0.5)

    grants = [f for f in findings if f.detector == "access.privilege_grant"
              and f.evidence.get("self_grant")]
    assert [f.entity.id for f in grants] == ["alice@example.com"], findings
    assert grants[0].sources[0].topic == audit and grants[0].severity in ("high", "critical")

    letters = [{k: v.decode() for k, v in m.headers} for m in dead]
    assert letters and all(h[FORMAT_HEADER] == "k8s-audit" and h[DLQ_HEADERS[0]] == audit
                           for h in letters)
    assert any(ITEM_HEADER in h for h in letters), "the bad item of an EventList, by index"

    # Every finding, once, as a schema-valid OCSF Detection Finding keyed by its entity.
    validator = jsonschema.Draft202012Validator(SCHEMA)
    events = [json.loads(r.value) for r in records]
    assert [list(validator.iter_errors(e)) for e in events] == [[] for _ in events]
    assert sorted(e["finding_info"]["uid"] for e in events) == \
        sorted(f.finding_id for f in findings)
    grant = next(e for e in events if e["finding_info"]["uid"] == grants[0].finding_id)
    assert (grant["class_uid"], grant["activity_id"]) == (2004, 1)
    assert grant["evidences"][0]["user"]["uid"] == "alice@example.com"
    assert {r.key for r in records} >= {b"alice@example.com"}
    assert committed(broker, settings.kafka.group_id)[(audit, 0)] == len(messages)
