"""The kafka action and the audit trail on the real broker (Tansu), TTL reverts across restarts."""

from __future__ import annotations

import json
import os
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pb_helpers import build_finding

pytestmark = pytest.mark.integration

BLOCK = """
actions:
  block:
    type: kafka
    params:
      action: block_principal
      target: "{entity.id}"
      ttl: %(ttl)s
      params: {scope: ml-platform}
routes:
  - name: exfil
    match: {kinds: [exfiltration]}
    actions: [block]
"""


@pytest.fixture(scope="module")
def producer(broker):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    yield p
    p.close(timeout=5)


@pytest.fixture
def topics(broker):
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    names = {"actions": f"mlwatchd.actions.{suffix}", "audit": f"mlwatchd.audit.{suffix}"}
    broker.create_topics(names.values())
    return names


def make_publish(producer):
    """What the daemon injects: send, wait for the ack, raise on failure."""

    def publish(topic: str, key: bytes | None, value: bytes,
                headers: list[tuple[str, bytes]]) -> None:
        producer.send(topic, key=key, value=value, headers=headers).get(timeout=10)

    return publish


def read(broker, topic: str, expect: int, timeout: float = 10.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) < expect:
        for messages in consumer.poll(timeout_ms=200).values():
            out.extend(messages)
    consumer.close()
    return out


def test_action_message_then_revert_after_ttl_even_across_a_restart(
        engine_factory, broker, producer, topics):
    publish = make_publish(producer)
    settings = {"actions_topic": topics["actions"], "audit_topic": topics["audit"]}
    engine, events = engine_factory(BLOCK % {"ttl": "1.5s"}, slack_route=None,
                                    publish=publish, **settings)
    finding = build_finding(kind="exfiltration", detector="exfil.bulk_read")
    engine.submit(finding)
    events.wait_for("action_delivered")
    assert engine.stop(timeout=2.0) == 0  # the revert is scheduled, not undelivered

    [block] = read(broker, topics["actions"], 1)
    message = json.loads(block.value)
    assert block.key == b"mallory"
    assert dict(block.headers)["mlwatchd-action"] == b"block_principal"
    assert message["action"] == "block_principal"
    assert message["target"] == {"type": "principal", "id": "mallory"}
    assert message["params"] == {"scope": "ml-platform"}
    assert message["reason"]["finding_id"] == finding.finding_id
    assert message["expires_at"] is not None

    # A new process on the same outbox publishes the revert when the TTL is up.
    engine2, events2 = engine_factory(BLOCK % {"ttl": "1.5s"}, slack_route=None,
                                      publish=publish, **settings)
    engine2.submit(finding)  # redelivered: not published again
    [delivered] = events2.wait_for("action_delivered", timeout=10)
    assert delivered["phase"] == "revert"
    records = read(broker, topics["actions"], 2)
    assert len(records) == 2
    revert = json.loads(records[1].value)
    assert revert["action"] == "unblock_principal" and revert["revert_of"] == message["action_id"]
    assert revert["target"] == message["target"]
    engine2.stop(timeout=2.0)

    audit = [json.loads(r.value) for r in read(broker, topics["audit"], 6)]
    events_seen = sorted(a["event"] for a in audit)
    assert events_seen == ["action_attempt", "action_attempt", "action_delivered",
                           "action_delivered", "finding_received", "incident_opened"]
    assert events_seen.count("action_delivered") == 2
    assert "action_attempt" in events_seen and "incident_opened" in events_seen
    assert all(a["schema"] == "mlwatchd.audit/v1" for a in audit)


def test_publish_failures_are_retried_not_lost(engine_factory, broker, producer, topics):
    real = make_publish(producer)
    calls = {"n": 0}

    def flaky(topic, key, value, headers):
        if topic == topics["actions"]:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise TimeoutError("broker unavailable")
        real(topic, key, value, headers)

    engine, events = engine_factory(BLOCK % {"ttl": "1h"}, slack_route=None, publish=flaky,
                                    actions_topic=topics["actions"], audit_topic=topics["audit"])
    engine.submit(build_finding(kind="exfiltration", detector="exfil.bulk_read"))
    events.wait_for("action_delivered", timeout=10)
    assert len(events.of("action_retry")) == 2 and calls["n"] == 3
    assert len(read(broker, topics["actions"], 1)) == 1
