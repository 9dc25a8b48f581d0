"""Kafka clients for the lab: demo, simulate, soak, evaluate, bench's producer, the broker.

One place builds them, on :func:`daemon.kafka_io.client_config`, so a lab
client has the daemon's security settings (SASL, TLS), reconnect backoff and a
client id of its own (``<kafka.client_id>-lab``), whether it talks to the
embedded broker or to a real cluster (``mlwatchd simulate --bootstrap``).
Pass a loaded config's ``kafka`` section, or a bare ``host:port`` for the
embedded broker (then the settings are the defaults with those servers).

bench.py's bare consumer does not use this on purpose: it is the baseline.

>>> lab_settings("127.0.0.1:9999").bootstrap_servers
'127.0.0.1:9999'
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any, TypeAlias

from daemon.kafka_io import client_config
from daemon.sections_kafka import KafkaSettings

__all__ = ["Where", "admin", "create_topics", "lab_settings", "producer", "read_topic",
           "reader"]

#: A loaded config's ``kafka`` section, or bootstrap servers alone.
Where: TypeAlias = KafkaSettings | str


def lab_settings(where: Where) -> KafkaSettings:
    """``where`` as Kafka settings (a bare ``host:port`` gets the defaults around it)."""
    if isinstance(where, KafkaSettings):
        return where
    return KafkaSettings(bootstrap_servers=where)


def _config(where: Where) -> dict[str, Any]:
    kafka = lab_settings(where)
    config = client_config(kafka)
    config["client_id"] = f"{kafka.client_id}-lab"
    return config


def producer(where: Where, *, max_request_size: int | None = None) -> Any:
    """A batching producer for test traffic (kafka-python's ``KafkaProducer``)."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {"linger_ms": 20, "batch_size": 256 * 1024}
    if max_request_size is not None:
        options["max_request_size"] = max_request_size
    return KafkaProducer(**_config(where), **options)


def reader(where: Where, **options: Any) -> Any:
    """A consumer outside any group, for assign() and seek (``options``: kafka-python's)."""
    from kafka import KafkaConsumer

    settings: dict[str, Any] = {"group_id": None, "enable_auto_commit": False,
                                "auto_offset_reset": "earliest"}
    settings.update(options)
    return KafkaConsumer(**_config(where), **settings)


def read_topic(where: Where, topic: str, idle_s: float = 3.0,
               timeout_s: float = 600.0) -> list[Any]:
    """Every message of ``topic`` from the beginning to its current end."""
    from kafka import TopicPartition

    consumer = reader(where, fetch_max_wait_ms=20, max_partition_fetch_bytes=4 * 1_048_576)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            for messages in batch.values():
                out.extend(messages)
            now = time.monotonic()
            if batch:
                quiet_since = now
                continue
            highs = [consumer.highwater(tp) for tp in tps]
            at_end = all(h is not None and consumer.position(tp) >= h
                         for tp, h in zip(tps, highs, strict=True))
            if (at_end and now - quiet_since >= 0.5) or now - quiet_since > idle_s * 10:
                break
        return out
    finally:
        consumer.close()


def admin(where: Where) -> Any:
    """An admin client (kafka-python's ``KafkaAdminClient``); close it when done."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(**_config(where))


def create_topics(where: Where, topics: Iterable[tuple[str, int]]) -> None:
    """Create each ``(name, partitions)`` with replication 1; existing ones are left alone."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(where)
    try:
        for name, partitions in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                client.create_topics([NewTopic(name, partitions, 1)])
    finally:
        client.close()
