"""The playbooks' Kafka publisher (kafka actions, audit trail) on both clients (issue #16)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import MessageSizeTooLargeError

from daemon.response import KafkaPublisher
from tests.integration.kafka_helpers import make_settings, read_all

pytestmark = pytest.mark.integration


def test_publisher_delivers_with_headers_and_a_refused_record_raises(
        broker: Any, client: str) -> None:
    settings = make_settings(broker, kafka={"client": client, "max_message_bytes": 1024,
                                            "max_request_size": 16 * 1024})
    topic = settings.topics.findings
    publish = KafkaPublisher(settings)
    try:
        publish(topic, b"k", b"action", [("h", b"1")])
        with pytest.raises(MessageSizeTooLargeError):
            publish(topic, b"k", b"x" * 40_000, [])  # above max_request_size: not sent
        publish(topic, b"k2", b"after", [])  # a fresh producer after the failure
    finally:
        publish.close()
    got = read_all(broker, topic, expect=2)
    assert [(m.key, m.value) for m in got] == [(b"k", b"action"), (b"k2", b"after")]
    assert list(got[0].headers) == [("h", b"1")]
