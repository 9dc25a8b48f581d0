"""Each format reads real Kafka records: headers and timestamps as kafka-python delivers them.

The fixture messages of every format are produced to a real broker (Tansu)
with their headers and timestamps by a real KafkaProducer, consumed back by a
real KafkaConsumer, and decoded from the ConsumerRecords' ``value``,
``headers`` and ``timestamp``; the results must be the fixture's expectations.
This stops at the decoded events; the daemon reading configured format
topics end to end is tests/integration/test_input_formats_wired.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaProducer

from daemon.formats import make_format
from tests.formats.fixture_io import fixture_files, mismatches, read_fixture
from tests.integration.kafka_helpers import read_all, unique

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_format_decodes_its_fixture_messages_from_a_real_broker(broker, path: Path) -> None:
    options, messages = read_fixture(path)
    topic = unique(f"formats.{path.parent.name}")
    broker.create_topics([topic])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for message in messages:
        producer.send(topic, value=message.value, headers=message.headers,
                      timestamp_ms=message.timestamp_ms)
    producer.flush()
    producer.close()
    records = read_all(broker, topic, expect=len(messages), settle_s=0.2)
    assert len(records) == len(messages)
    fmt = make_format(path.parent.name, options)
    problems = []
    for message, record in zip(messages, sorted(records, key=lambda r: r.offset), strict=True):
        assert record.headers == message.headers or (not message.headers and not record.headers)
        results = fmt.decode(record.value, record.headers, record.timestamp)
        problems += [f"{message.name}: {p}" for p in mismatches(results, message.expect)]
    assert not problems, "\n".join(problems)
