"""Kafka clients for the daemon: configuration, connecting with backoff, sinks."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple, Protocol, TypeVar

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import (
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from daemon.sections_kafka import KafkaSettings

__all__ = [
    "DLQ_HEADERS",
    "TRUNCATED_HEADERS",
    "Consumer",
    "OutRecord",
    "ProduceFailed",
    "Producer",
    "Refusal",
    "client_config",
    "connect",
    "dlq_record",
    "ensure_topics",
    "new_consumer",
    "new_producer",
    "send_all",
    "truncated_dead_letter",
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
#: Extra headers on a dead letter sent cut down: size and SHA-256 (hex) of the
#: original value, so the message can be matched to the source offset's bytes.
TRUNCATED_HEADERS: Final = ("mlwatchd.original.size", "mlwatchd.original.sha256")
#: What a cut-down dead letter keeps of the value and of the key; the message's
#: own headers are dropped if together they are larger than the value's share.
_KEEP_VALUE_BYTES: Final = 8 * 1024
_KEEP_KEY_BYTES: Final = 1024
#: Errors about one record that no retry can fix (kafka-python raises the first
#: from ``send`` itself when a record exceeds ``max_request_size``; brokers
#: answer with them for a record above their ``message.max.bytes``). Other
#: non-retriable errors (authorisation, ...) are about the cluster: those are
#: retried, since dropping would lose every finding until an operator fixes it.
_RECORD_ERRORS: Final = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                         InvalidTimestampError)


class Delivery(Protocol):
    """A send's outcome: ``get`` returns once acknowledged, or raises its error."""

    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    """What the daemon asks of a producer (kafka-python's ``KafkaProducer`` has it).

    ``send`` raises, or its delivery fails with, kafka-python's error classes:
    a record refused for good is one of ``_RECORD_ERRORS`` (or ``ValueError``
    / ``TypeError``), anything else a ``KafkaError``.
    """

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None) -> Delivery: ...

    def flush(self, timeout: float | None = None) -> Any: ...

    def close(self, timeout: float | None = None) -> Any: ...


class Consumer(Protocol):
    """What the daemon asks of a group consumer (kafka-python's ``KafkaConsumer`` has it).

    ``poll`` returns ``{TopicPartition: [record]}`` (kafka-python's
    ``TopicPartition``; records with ``topic, partition, offset, timestamp,
    key, value, headers``); ``commit`` takes ``{TopicPartition:
    OffsetAndMetadata}`` and raises ``CommitFailedError`` when the group has
    moved on, another ``KafkaError`` otherwise. The listener's callbacks run
    inside ``poll``.
    """

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> Any: ...

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]: ...

    def commit(self, offsets: dict[Any, Any] | None = None) -> Any: ...

    def seek(self, partition: Any, offset: int) -> Any: ...

    def pause(self, *partitions: Any) -> Any: ...

    def resume(self, *partitions: Any) -> Any: ...

    def position(self, partition: Any, timeout_ms: int | None = None) -> int: ...

    def committed(self, partition: Any) -> int | None: ...

    def assignment(self) -> set[Any]: ...

    def highwater(self, partition: Any) -> int | None: ...

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...

    def close(self, autocommit: bool = ...) -> Any: ...


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


def new_consumer(kafka: KafkaSettings) -> Consumer:
    """The daemon's group consumer, on the client ``kafka.client`` names."""
    if kafka.client == "confluent":
        from daemon import kafka_confluent

        return kafka_confluent.new_consumer(kafka)
    consumer: Consumer = KafkaConsumer(
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
    return consumer


def new_producer(kafka: KafkaSettings) -> Producer:
    """The findings and dead-letter producer, on the client ``kafka.client`` names."""
    if kafka.client == "confluent":
        from daemon import kafka_confluent

        return kafka_confluent.new_producer(kafka)
    producer: Producer = KafkaProducer(
        **client_config(kafka),
        acks="all",
        linger_ms=kafka.linger_ms,
        batch_size=256 * 1024,
        max_request_size=kafka.producer_max_request_size,
        bootstrap_timeout_ms=5_000,
    )
    return producer


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


class Refusal(NamedTuple):
    """A record refused for good; ``truncated``: a cut-down dead letter went instead."""

    record: OutRecord
    error: BaseException
    truncated: bool


class ProduceFailed(Exception):
    """Some records were not acknowledged; ``failed`` can be sent again.

    ``refused`` are the records of the same call refused for good (not retried).
    """

    def __init__(self, failed: list[OutRecord], error: BaseException,
                 refused: list[Refusal] | None = None) -> None:
        super().__init__(f"{len(failed)} records not acknowledged: {error}")
        self.failed = failed
        self.error = error
        self.refused = refused or []


def send_all(
    producer: Producer, records: Sequence[OutRecord], timeout_s: float
) -> list[Refusal]:
    """Send ``records`` and wait until the broker acknowledged every one of them.

    A record refused for good (too large, invalid) is not retried: a refused
    dead letter is sent again cut down (:func:`truncated_dead_letter`), so the
    partition it came from moves on; any other is dropped. Returns those
    refusals; raises :class:`ProduceFailed` (holding them too) if some records
    are worth sending again.
    """
    deadline = time.monotonic() + timeout_s
    failed, error, refused = _send_round(producer, records, timeout_s)
    refusals: list[Refusal] = []
    cut: list[tuple[OutRecord, OutRecord, BaseException]] = []
    for rec, exc in refused:
        smaller = truncated_dead_letter(rec) if _is_dead_letter(rec) else None
        if smaller is not None and _size(smaller) < _size(rec):
            cut.append((rec, smaller, exc))
        else:
            refusals.append(Refusal(rec, exc, False))
    if cut:
        failed2, error2, refused2 = _send_round(
            producer, [smaller for _, smaller, _ in cut], max(0.0, deadline - time.monotonic()))
        still = {id(rec) for rec, _ in refused2}
        for original, smaller, exc in cut:
            refusals.append(Refusal(original, exc, id(smaller) not in still))
        failed.extend(failed2)
        error = error or error2
    if failed:
        raise ProduceFailed(failed, error or RuntimeError("unknown"), refusals)
    return refusals


def _send_round(
    producer: Producer, records: Sequence[OutRecord], timeout_s: float
) -> tuple[list[OutRecord], BaseException | None, list[tuple[OutRecord, BaseException]]]:
    """One send of ``records``: (not acknowledged, first error, refused for good)."""
    futures = []
    failed: list[OutRecord] = []
    refused: list[tuple[OutRecord, BaseException]] = []
    error: BaseException | None = None
    for i, rec in enumerate(records):
        try:
            futures.append((rec, producer.send(rec[0], key=rec[1], value=rec[2], headers=rec[3])))
        except _RECORD_ERRORS as exc:
            refused.append((rec, exc))
        except KafkaError as exc:  # no metadata, closed: the rest waits for the next attempt
            failed.extend(records[i:])
            error = exc
            break
        except (ValueError, TypeError) as exc:  # kafka-python's checks of the record itself
            refused.append((rec, exc))
    producer.flush(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    for rec, future in futures:
        try:
            future.get(timeout=max(0.0, deadline - time.monotonic()))
        except _RECORD_ERRORS as exc:
            refused.append((rec, exc))
        except Exception as exc:  # KafkaError or a timeout: either way not acknowledged
            failed.append(rec)
            error = error or exc
    return failed, error, refused


def _size(rec: OutRecord) -> int:
    _, key, value, headers = rec
    return (len(key or b"") + len(value or b"")
            + sum(len(name) + len(data) for name, data in headers or ()))


def _is_dead_letter(rec: OutRecord) -> bool:
    """Made by :func:`dlq_record`: our headers come last, after the message's own."""
    headers = rec[3] or []
    return tuple(name for name, _ in headers[-len(DLQ_HEADERS):]) == DLQ_HEADERS


def truncated_dead_letter(rec: OutRecord) -> OutRecord:
    """``rec`` (a dead letter) cut down to a size any broker takes.

    The value keeps its first 8 KiB, the key its first 1 KiB; the message's own
    headers go if they are larger than 8 KiB together. Headers say the original
    value's size and SHA-256, so the message stays identifiable; the source
    topic, partition and offset headers say where the whole of it is.
    """
    topic, key, value, headers = rec
    value = value or b""
    ours = list((headers or [])[-len(DLQ_HEADERS):])
    theirs = list((headers or [])[:-len(DLQ_HEADERS)])
    if sum(len(name) + len(data) for name, data in theirs) > _KEEP_VALUE_BYTES:
        theirs = []
    if key is not None and len(key) > _KEEP_KEY_BYTES:
        key = key[:_KEEP_KEY_BYTES]
    extra = [(TRUNCATED_HEADERS[0], str(len(value)).encode()),
             (TRUNCATED_HEADERS[1], hashlib.sha256(value).hexdigest().encode())]
    return (topic, key, value[:_KEEP_VALUE_BYTES], [*theirs, *extra, *ours])


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
