"""The context table on the real broker: pipeline runs seen across partitions and replicas.

Two daemons in one group; the orchestrator's ``pipeline.run`` events are on
audit partition 0, the trainer's model changes on partition 1. The run is
known to the trainer's detector instance only through the signed, compacted
context topic.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from daemon.integrity import MAC_HEADER, header, verify_mac
from tests.integration.kafka_helpers import (
    DaemonThread,
    make_settings,
    read_all,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

KEY = "context-test-key-0123456789"


def audit(ts: float, actor: str, action: str, resource: str, **attributes: object) -> bytes:
    body = {"ts": ts, "actor": actor, "action": action, "resource": resource,
            "outcome": "success"}
    if attributes:
        body["attributes"] = attributes
    return orjson.dumps(body)


def send(broker: Any, topic: str, partition: int, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for value in values:
        producer.send(topic, value=value, partition=partition)
    producer.flush()
    producer.close()


def test_cross_partition_runs_pass_and_forged_runs_are_reported_by_two_replicas(
    broker: Any,
) -> None:
    context_topic = unique("mlwatchd.context")
    settings = make_settings(
        broker, partitions=2,
        topics={"context": context_topic},
        state={"signing_key": KEY},
        detectors={"access.model_change": {"params": {"hold_seconds": 600}}},
    )
    audit_topic = settings.topics.audit
    findings_topic = settings.topics.findings
    t0 = time.time() - 6 * 3600
    with DaemonThread(settings) as one, DaemonThread(settings) as two:
        # The trainer's update may be judged before the orchestrator's replica
        # publishes the run: it is held, not reported.
        send(broker, audit_topic, 0, [
            audit(t0, "svc-airflow", "pipeline.run", "pipeline:fraud-train",
                  run_id="fraud-001", phase="start"),
        ])
        send(broker, audit_topic, 1, [
            audit(t0 + 1800, "svc-trainer", "model.update", "model:fraud:7",
                  run_id="fraud-001"),
            audit(t0 + 1900, "mallory", "model.update", "model:fraud:7", run_id="forged-9"),
        ])
        first, second = one.daemon.context, two.daemon.context
        assert first is not None and second is not None
        replicas = (first, second)
        # both replicas read the run from the topic, whichever published it
        assert wait_for(lambda: all(c.get_run("fraud-001") for c in replicas), timeout_s=60)
        # An attacker who can write the context topic tries to whitelist a run.
        forged = orjson.dumps({
            "run_id": "evil-1", "orchestrator": "svc-airflow", "pipeline": "pipeline:x",
            "start_ts": t0, "end_ts": None, "prior_runs": 99,
            "orchestrator_first_ts": t0, "watch_start_ts": t0})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send(context_topic, key=b"run:evil-1", value=forged,
                      headers=[(MAC_HEADER, b"0" * 64)])
        producer.send(context_topic, key=b"run:evil-1", value=forged)
        producer.flush()
        producer.close()
        assert wait_for(lambda: sum(c.rejected for c in replicas) >= 4, timeout_s=30)
        send(broker, audit_topic, 1, [
            audit(t0 + 2000, "eve", "model.update", "model:fraud:7", run_id="evil-1"),
            # this partition's event time passes the hold: held changes are judged
            audit(t0 + 3 * 3600, "svc-trainer", "dataset.read", "dataset:x"),
        ])
        send(broker, audit_topic, 0, [
            audit(t0 + 1950, "svc-airflow", "pipeline.run", "pipeline:fraud-train",
                  run_id="fraud-001", phase="end", status="success"),
        ])
        found = read_all(broker, findings_topic, 2, timeout_s=60, settle_s=3.0)
        rejected = sum(c.rejected for c in replicas)
    by_entity: dict[str, str] = {}
    for message in found:
        finding = orjson.loads(message.value)
        if finding["detector"] == "access.model_change":
            by_entity[finding["entity"]["id"]] = finding["evidence"]["rule"]
    assert by_entity == {"mallory": "unknown_run", "eve": "unknown_run"}
    assert rejected >= 4  # both forged records, refused by each replica
    records = read_all(broker, context_topic, 2, timeout_s=10, settle_s=1.0)
    ours = [r for r in records if r.key == b"run:fraud-001"]
    assert len(ours) == 2  # start, then end
    for record in ours:
        tag = header(record.headers, MAC_HEADER)
        assert verify_mac(KEY.encode(), ["context", context_topic, "run:fraud-001"],
                          record.value, tag)
    assert orjson.loads(ours[-1].value)["end_ts"] == pytest.approx(t0 + 1950)
