"""Hostile messages against a running daemon, real broker, real clients (issue #12;
on both kafka-python and confluent, issue #16).

Before: the 400-digit ``ts`` (OverflowError) and the 1,000-deep ``attributes``
(RecursionError) left the consumer loop, nothing committed, every restart died
at the same offset; a dead letter larger than the producer's max_request_size
was retried forever and its partition stalled. Now each is one dead letter
with its reason and the events after it are processed and committed.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import pytest

from daemon.kafka_io import DLQ_HEADERS, TRUNCATED_HEADERS, dlq_record, new_producer, send_all
from daemon.settings import KafkaSettings
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    inference,
    make_settings,
    produce,
    read_all,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0
_FIELDS = b'"model_id":"m","request_id":"r","principal":"p","features":[1],"prediction":1'
HUGE_TS = b'{"ts":' + b"9" * 400 + b"," + _FIELDS + b"}"
DEEP = b'{"ts":1767225600,' + _FIELDS + b',"attributes":' + b'{"a":' * 1000 + b"1" \
    + b"}" * 1000 + b"}"
YEAR_9999 = orjson.dumps({"ts": "9999-12-31T23:59:59Z", "model_id": "m", "request_id": "r",
                          "principal": "p", "features": [1], "prediction": 1})
OVERSIZED = b'{"pad": "' + b"x" * 200_000 + b'"}'


def test_hostile_messages_are_dead_lettered_with_reasons_and_later_events_committed(
    broker: Any, client: str,
) -> None:
    # max_request_size below the oversized message: its dead letter cannot go whole
    settings = make_settings(broker, kafka={"max_message_bytes": 32 * 1024,
                                            "max_request_size": 64 * 1024, "client": client})
    good = [(b"alice", inference(T0 + i, "alice", i)) for i in range(40)]
    hostile = [(b"h1", HUGE_TS, "ts_out_of_range"), (b"h2", DEEP, "too_deep"),
               (b"h3", OVERSIZED, "too_large"), (b"h4", YEAR_9999, "ts_out_of_range")]
    stream: list[tuple[bytes | None, bytes | None]] = list(good[:10])
    for i, (key, value, _) in enumerate(hostile):
        stream.append((key, value))
        stream.extend(good[10 + i * 5:15 + i * 5])
    stream.extend(good[30:])
    produce(broker, settings.topics.inference, stream)
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(stream), timeout_s=60), \
            run.daemon.processed
        assert wait_for(lambda: committed(broker, settings.kafka.group_id).get(
            (settings.topics.inference, 0)) == len(stream))
        dead = read_all(broker, settings.topics.dlq, expect=len(hostile))
        ready = run.daemon.health.ready
    assert ready, "refused records must not leave the daemon unready"
    assert len(dead) == len(hostile)
    # a cut-down dead letter goes in a second round, after the others of its batch
    dead.sort(key=lambda m: int(dict(m.headers)[DLQ_HEADERS[2]]))
    for message, (key, value, reason) in zip(dead, hostile, strict=True):
        headers = {k: v for k, v in message.headers}
        assert headers[DLQ_HEADERS[3]].decode() == reason
        assert stream[int(headers[DLQ_HEADERS[2]])] == (key, value)
        assert message.key == key
        if value is OVERSIZED:
            assert message.value == OVERSIZED[:8192], "cut down to fit max_request_size"
            assert headers[TRUNCATED_HEADERS[0]] == str(len(OVERSIZED)).encode()
            assert headers[TRUNCATED_HEADERS[1]].decode() == hashlib.sha256(OVERSIZED).hexdigest()
        else:
            assert message.value == value, "a dead letter that fits is unchanged"
            assert TRUNCATED_HEADERS[0] not in headers
    metrics = run.daemon.metrics
    assert metrics.refused.labels(settings.topics.dlq, "truncated")._value.get() == 1
    assert metrics.produce_retries._value.get() == 0, "a refusal is not retried"
    assert metrics.events.labels(settings.topics.inference)._value.get() == len(stream)


def test_send_all_does_not_retry_a_record_refused_for_its_size(broker: Any, client: str) -> None:
    """A finding too large for the producer is dropped and reported; the rest is delivered."""
    topic, dlq = unique("out"), unique("dlq")
    broker.create_topics([topic, dlq])
    producer = new_producer(KafkaSettings(client=client, bootstrap_servers=broker.bootstrap,
                                          max_message_bytes=1024, max_request_size=16 * 1024))
    try:
        big = (topic, b"k", b"f" * 40_000, None)
        small = (topic, b"k", b"small", None)
        letter = dlq_record(dlq, "ml.audit", 2, 7, b"k", b"d" * 40_000, None, "not_json", "x")
        started = time.monotonic()
        refusals = send_all(producer, [big, small, letter], timeout_s=10)
        took = time.monotonic() - started
    finally:
        producer.close()
    assert took < 5, "refused records are not waited on or retried"
    outcomes = [((r.record[2] or b"")[:1], r.truncated) for r in refusals]
    assert outcomes == [(b"f", False), (b"d", True)]
    assert all(type(r.error).__name__ == "MessageSizeTooLargeError" for r in refusals)
    assert [m.value for m in read_all(broker, topic, expect=1)] == [b"small"]
    [cut] = read_all(broker, dlq, expect=1)
    headers = dict(cut.headers)
    assert cut.value == b"d" * 8192 and headers[TRUNCATED_HEADERS[0]] == b"40000"
    assert headers[DLQ_HEADERS[2]] == b"7"
