"""Kafka clients for the daemon: configuration, connecting with backoff, sinks."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from daemon.settings import KafkaSettings

__all__ = [
    "DLQ_HEADERS",
    "OutRecord",
    "ProduceFailed",
    "client_config",
    "connect",
    "dlq_record",
    "ensure_topics",
    "new_consumer",
    "new_producer",
    "send_all",
]

log = structlog.get_logger("mlwatchd.kafka")
T = TypeVar("T")

#: Header names on dead-lettered messages (values are UTF-8 text).
DLQ_HEADERS: Final = (
    "mlwatchd.source.topic",
    "mlwatchd.source.partition",
    "mlwatchd.source.offset",
    "mlwatchd.error.reason",
    "mlwatchd.error.detail",
)


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Options every client shares: servers, identity, security."""
    config: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "reconnect_backoff_max_ms": int(kafka.reconnect_backoff_max_s * 1000),
    }
    if kafka.sasl_mechanism:
        config["sasl_mechanism"] = kafka.sasl_mechanism
        config["sasl_plain_username"] = kafka.sasl_plain_username
        if kafka.sasl_plain_password is not None:
            config["sasl_plain_password"] = kafka.sasl_plain_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(kafka, name):
            config[name] = getattr(kafka, name)
    return config


def ensure_topics(kafka: KafkaSettings, wanted: dict[str, tuple[int, dict[str, str]]]) -> bool:
    """Create each missing topic with (partitions, configs); existing ones are left as they are.

    The replication factor is the broker's default (``-1``), falling back to 1
    on brokers that do not accept that.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_config(kafka), bootstrap_timeout_ms=5_000)
    try:
        existing = set(admin.list_topics())
        for name, (partitions, configs) in wanted.items():
            if name in existing:
                continue
            # TopicAlreadyExists: another replica was quicker.
            with contextlib.suppress(TopicAlreadyExistsError):
                try:
                    admin.create_topics([NewTopic(name, partitions, -1, topic_configs=configs)])
                except KafkaError as exc:
                    if isinstance(exc, TopicAlreadyExistsError):
                        raise
                    admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
            log.info("topic_created", topic=name, partitions=partitions, configs=configs)
    finally:
        admin.close()
    return True


def new_consumer(kafka: KafkaSettings) -> KafkaConsumer:
    return KafkaConsumer(
        **client_config(kafka),
        group_id=kafka.group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.auto_offset_reset,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        max_poll_records=kafka.max_poll_records,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
        bootstrap_timeout_ms=5_000,
    )


def new_producer(kafka: KafkaSettings) -> KafkaProducer:
    return KafkaProducer(
        **client_config(kafka),
        acks="all",
        linger_ms=kafka.linger_ms,
        batch_size=256 * 1024,
        max_request_size=max(kafka.max_message_bytes + 64 * 1024, 1_048_576),
        bootstrap_timeout_ms=5_000,
    )


def connect(
    factory: Callable[[], T],
    what: str,
    stopping: threading.Event,
    backoff_max_s: float,
    on_failure: Callable[[], None] | None = None,
) -> T | None:
    """``factory()`` retried with jittered exponential backoff until it works.

    Returns None if ``stopping`` is set first. Each failure is logged, so an
    operator sees that the broker is unreachable and that mlwatchd keeps trying.
    """
    delay = 0.5
    attempt = 0
    while not stopping.is_set():
        attempt += 1
        try:
            client = factory()
        except (KafkaError, OSError) as exc:
            if on_failure is not None:
                on_failure()
            log.warning("kafka_unreachable", client=what, attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 1))
            stopping.wait(delay)
            delay = min(delay * 2, backoff_max_s) * random.uniform(0.8, 1.0)
            continue
        if attempt > 1:
            log.info("kafka_connected", client=what, attempts=attempt)
        return client
    return None


#: topic, key, value, headers
OutRecord = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]


class ProduceFailed(Exception):
    """Some records were not acknowledged; ``failed`` can be sent again."""

    def __init__(self, failed: list[OutRecord], error: BaseException) -> None:
        super().__init__(f"{len(failed)} records not acknowledged: {error}")
        self.failed = failed
        self.error = error


def send_all(producer: KafkaProducer, records: Sequence[OutRecord], timeout_s: float) -> None:
    """Send ``records`` and wait until the broker acknowledged every one of them."""
    futures = [
        (rec, producer.send(rec[0], key=rec[1], value=rec[2], headers=rec[3]))
        for rec in records
    ]
    producer.flush(timeout=timeout_s)
    failed: list[OutRecord] = []
    error: BaseException | None = None
    deadline = time.monotonic() + timeout_s
    for rec, future in futures:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # KafkaError or a timeout: either way not acknowledged
            failed.append(rec)
            error = error or exc
    if failed:
        raise ProduceFailed(failed, error or RuntimeError("unknown"))


def dlq_record(
    dlq_topic: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]] | None,
    reason: str,
    detail: str,
) -> OutRecord:
    """The dead letter: same key and value bytes, original headers plus ours."""
    ours = [
        (DLQ_HEADERS[0], topic.encode()),
        (DLQ_HEADERS[1], str(partition).encode()),
        (DLQ_HEADERS[2], str(offset).encode()),
        (DLQ_HEADERS[3], reason.encode()),
        (DLQ_HEADERS[4], detail[:500].encode("utf-8", "replace")),
    ]
    if key is None and value is None:
        value = b""  # Kafka clients refuse a record with neither; the reason header says "empty"
    return (dlq_topic, key, value, [*(headers or ()), *ours])
