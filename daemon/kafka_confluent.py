"""The librdkafka transport (``kafka.client: confluent``), shaped as kafka-python.

The daemon is written against the subset of kafka-python's consumer and
producer that :class:`daemon.kafka_io.Consumer` and
:class:`daemon.kafka_io.Producer` name. This module gives confluent-kafka
that shape, so the consumer loop and :func:`daemon.kafka_io.send_all` run
unchanged on either client:

- ``poll`` returns ``{TopicPartition: [Record]}`` with kafka-python's
  ``TopicPartition`` and records carrying ``topic, partition, offset,
  timestamp, key, value, headers`` (headers a list, never None);
- errors are kafka-python's classes: a record refused for its size or
  validity raises (or fails its future with) ``MessageSizeTooLargeError``,
  ``RecordListTooLargeError``, ``InvalidRecordError`` or
  ``InvalidTimestampError``, which ``send_all`` does not retry; anything else
  is a ``KafkaError`` (retried); a commit refused because the group moved on
  is a ``CommitFailedError``;
- the rebalance listener's callbacks run inside ``poll`` as with
  kafka-python; seeks and pauses asked for inside ``on_partitions_assigned``
  are applied through the assignment itself (librdkafka cannot seek a
  partition it has not started fetching).

The daemon's consumer and every producer made by
:func:`daemon.kafka_io.new_producer` (findings and dead letters, the
playbooks' publisher) use this transport; topic creation, the Kafka state
store and the audit-topic reader stay on kafka-python (off the hot path).

Why one module of ~400 lines: it is one adapter with one job (kafka-python's
shape over librdkafka); its consumer, producer, record and error mapping
share the same conversions, and each half alone would not run the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import confluent_kafka as ck
import structlog
from kafka import TopicPartition
from kafka import errors as kerr
from kafka.structs import OffsetAndMetadata

from daemon.sections_kafka import KafkaSettings

__all__ = ["ConfluentConsumer", "ConfluentProducer", "Record", "new_consumer", "new_producer"]

log = structlog.get_logger("mlwatchd.kafka")

_E = ck.KafkaError
#: librdkafka error codes for a record no retry can fix, as kafka-python's classes.
_RECORD_ERRORS: dict[int, type[kerr.KafkaError]] = {
    _E.MSG_SIZE_TOO_LARGE: kerr.MessageSizeTooLargeError,
    _E.RECORD_LIST_TOO_LARGE: kerr.RecordListTooLargeError,
    _E.INVALID_RECORD: kerr.InvalidRecordError,
    _E.INVALID_TIMESTAMP: kerr.InvalidTimestampError,
    _E.INVALID_MSG_SIZE: kerr.MessageSizeTooLargeError,
}
#: A commit the group no longer accepts: the new owner resumes from the last commit.
_COMMIT_REFUSED = frozenset({_E.REBALANCE_IN_PROGRESS, _E.ILLEGAL_GENERATION,
                             _E.UNKNOWN_MEMBER_ID, _E._ASSIGNMENT_LOST})


class Record(NamedTuple):
    """A consumed message, shaped as kafka-python's ``ConsumerRecord`` for what the daemon reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def _error(err: Any, what: str) -> kerr.KafkaError:
    """A librdkafka ``KafkaError`` (or exception holding one) as kafka-python's class."""
    if isinstance(err, ck.KafkaException):
        err = err.args[0] if err.args else None
    if not isinstance(err, ck.KafkaError):
        return kerr.KafkaError(f"{what}: {err}")
    cls = _RECORD_ERRORS.get(err.code())
    if cls is not None:
        return cls(f"{what}: {err.str()}")
    if err.code() in _COMMIT_REFUSED:
        return kerr.CommitFailedError(f"{what}: {err.str()}")
    return kerr.KafkaError(f"{what}: {err.name()}: {err.str()}")


def common_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka options every client shares: servers, identity, security."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol.lower(),
        "reconnect.backoff.max.ms": int(kafka.reconnect_backoff_max_s * 1000),
        # librdkafka logs to stderr by default; these go through structlog instead
        "logger": _Logger(),
    }
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_plain_username
        if kafka.sasl_plain_password is not None:
            config["sasl.password"] = kafka.sasl_plain_password.get_secret_value()
    for name, option in (("ssl_cafile", "ssl.ca.location"),
                         ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if getattr(kafka, name):
            config[option] = getattr(kafka, name)
    return config


class _Logger:
    """librdkafka's log lines, as structlog events (no config values are in them)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # confluent-kafka maps librdkafka's syslog levels to Python logging levels
        if level >= logging.ERROR:
            log.error("librdkafka", message=(fmt % args if args else fmt)[:500])
        elif level >= logging.WARNING:
            log.warning("librdkafka", message=(fmt % args if args else fmt)[:500])


def _reachable(client: Any, timeout_s: float = 5.0) -> None:
    """Raise ``KafkaConnectionError`` unless a broker answers, as kafka-python's constructors."""
    try:
        client.list_topics(timeout=timeout_s)
    except ck.KafkaException as exc:
        raise kerr.KafkaConnectionError(f"no broker answered: {exc}") from exc


class ConfluentConsumer:
    """A confluent-kafka ``Consumer`` with the kafka-python methods the daemon calls."""

    def __init__(self, config: dict[str, Any], auto_offset_reset: str = "earliest") -> None:
        self._c = ck.Consumer(config)
        self._reset = auto_offset_reset
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._listener: Any = None
        #: Inside on_assign: seeks and pauses the listener asked for.
        self._assigning: dict[TopicPartition, int] | None = None
        self._pausing: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        try:
            _reachable(self._c)
        except Exception:
            self._c.close()
            raise

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        tp = self._tps.get((topic, partition))
        if tp is None:
            tp = self._tps[(topic, partition)] = TopicPartition(topic, partition)
        return tp

    # -- group membership -----------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self._listener = listener
        self._c.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                          on_lost=self._on_revoke)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        self._assigning, self._pausing = {}, set()
        try:
            if self._listener is not None:
                self._listener.on_partitions_assigned(tps)
            seeks = self._assigning
        finally:
            self._assigning = None
        consumer.assign([ck.TopicPartition(tp.topic, tp.partition, seeks[tp]) if tp in seeks
                         else ck.TopicPartition(tp.topic, tp.partition) for tp in tps])
        if self._pausing:
            consumer.pause([ck.TopicPartition(tp.topic, tp.partition) for tp in self._pausing])
            self._paused |= self._pausing

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [self._tp(p.topic, p.partition) for p in partitions]
        if self._listener is not None:
            self._listener.on_partitions_revoked(tps)
        self._paused.difference_update(tps)
        consumer.unassign()

    def assignment(self) -> set[TopicPartition]:
        return {self._tp(p.topic, p.partition) for p in self._c.assignment()}

    # -- reading --------------------------------------------------------------

    def poll(self, timeout_ms: int = 0, max_records: int | None = None
             ) -> dict[TopicPartition, list[Record]]:
        try:
            messages = self._c.consume(num_messages=max_records or 500,
                                       timeout=timeout_ms / 1000)
        except ck.KafkaException as exc:
            raise _error(exc, "poll") from exc
        out: dict[TopicPartition, list[Record]] = {}
        current: list[Record] | None = None
        last: tuple[str, int] | None = None
        m: Any  # librdkafka's Message: topic, partition and offset are set when no error
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == _E._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise _error(err, "poll")
                log.warning("consume_error", error=f"{err.name()}: {err.str()}")
                continue
            where = (m.topic(), m.partition())
            if where != last:
                last = where
                current = out.setdefault(self._tp(*where), [])
            assert current is not None
            current.append(Record(where[0], where[1], m.offset(), m.timestamp()[1], m.key(),
                                  m.value(), m.headers() or []))
        return out

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        try:
            meta = self._c.list_topics(topic, timeout=10).topics.get(topic)
        except ck.KafkaException as exc:
            raise _error(exc, "metadata") from exc
        if meta is None or meta.error is not None:
            return None
        return set(meta.partitions)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The high watermark last seen in a fetch response (no request)."""
        try:
            _, high = self._c.get_watermark_offsets(
                ck.TopicPartition(tp.topic, tp.partition), cached=True)
        except ck.KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    # -- positions and commits ------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self._assigning is not None:
            self._assigning[tp] = offset
            return
        try:
            self._c.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
        except ck.KafkaException:
            # Not fetching yet (paused since its assignment): re-assign it at the offset.
            self._reassign({tp: offset})

    def _reassign(self, at: dict[TopicPartition, int]) -> None:
        parts = []
        for p in self._c.assignment():
            tp = self._tp(p.topic, p.partition)
            if tp in at:
                parts.append(ck.TopicPartition(tp.topic, tp.partition, at[tp]))
            else:
                parts.append(ck.TopicPartition(tp.topic, tp.partition, self._offset_of(tp)))
        try:
            self._c.assign(parts)
            if self._paused:
                self._c.pause([ck.TopicPartition(t.topic, t.partition) for t in self._paused])
        except ck.KafkaException as exc:
            raise _error(exc, "seek") from exc

    def _offset_of(self, tp: TopicPartition) -> int:
        [p] = self._c.position([ck.TopicPartition(tp.topic, tp.partition)])
        return int(p.offset) if p.offset >= 0 else ck.OFFSET_STORED

    def pause(self, *tps: TopicPartition) -> None:
        if self._assigning is not None:
            self._pausing.update(tps)
            return
        self._c.pause([ck.TopicPartition(tp.topic, tp.partition) for tp in tps])
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._c.resume([ck.TopicPartition(tp.topic, tp.partition) for tp in tps])
        self._paused.difference_update(tps)

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        """Next offset to fetch; before the first fetch, the committed or reset offset."""
        try:
            [p] = self._c.position([ck.TopicPartition(tp.topic, tp.partition)])
            if p.offset >= 0:
                return int(p.offset)
            committed = self.committed(tp)
            if committed is not None:
                return committed
            low, high = self._c.get_watermark_offsets(
                ck.TopicPartition(tp.topic, tp.partition),
                timeout=(timeout_ms or 10_000) / 1000)
        except ck.KafkaException as exc:
            raise _error(exc, "position") from exc
        return int(low if self._reset == "earliest" else high)

    def committed(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        try:
            [p] = self._c.committed([ck.TopicPartition(tp.topic, tp.partition)],
                                    timeout=(timeout_ms or 10_000) / 1000)
        except ck.KafkaException as exc:
            raise _error(exc, "committed") from exc
        return int(p.offset) if p.offset >= 0 else None

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata] | None = None) -> None:
        try:
            if offsets is None:
                result = self._c.commit(asynchronous=False)
            else:
                result = self._c.commit(
                    offsets=[ck.TopicPartition(tp.topic, tp.partition, meta.offset)
                             for tp, meta in offsets.items()], asynchronous=False)
        except ck.KafkaException as exc:
            if exc.args and isinstance(exc.args[0], ck.KafkaError) \
                    and exc.args[0].code() == _E._NO_OFFSET:
                return
            raise _error(exc, "commit") from exc
        for p in result or ():
            if p.error is not None:
                raise _error(p.error, "commit")

    def close(self, autocommit: bool = False) -> None:
        self._c.close()


class _Delivery:
    """A send's outcome, as kafka-python's future: ``get(timeout)`` returns or raises."""

    __slots__ = ("_error", "_producer", "done")

    def __init__(self, producer: ck.Producer) -> None:
        self._producer = producer
        self.done = False
        self._error: kerr.KafkaError | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        self.done = True
        if err is not None:
            self._error = _error(err, "delivery")

    def get(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while not self.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise kerr.KafkaTimeoutError("not acknowledged in time")
            self._producer.poll(min(left, 0.1))
        if self._error is not None:
            raise self._error


class ConfluentProducer:
    """A confluent-kafka ``Producer`` with kafka-python's ``send``/``flush``/``close``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._p = ck.Producer(config)
        _reachable(self._p)

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
             headers: Iterable[tuple[str, bytes]] | None = None) -> _Delivery:
        done = _Delivery(self._p)
        kwargs: dict[str, Any] = {"on_delivery": done}
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                self._p.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:  # local queue full: serve delivery reports, then again
                self._p.poll(0.1)
            except ck.KafkaException as exc:
                raise _error(exc, "send") from exc
        return done

    def flush(self, timeout: float | None = None) -> None:
        self._p.flush(timeout if timeout is not None else -1)

    def close(self, timeout: float | None = None) -> None:
        self._p.flush(timeout if timeout is not None else -1)


def new_consumer(kafka: KafkaSettings) -> ConfluentConsumer:
    config = {
        **common_config(kafka),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "session.timeout.ms": kafka.session_timeout_ms,
        "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
        "max.poll.interval.ms": kafka.max_poll_interval_ms,
        "fetch.wait.max.ms": kafka.fetch_max_wait_ms,
        "max.partition.fetch.bytes": kafka.max_partition_fetch_bytes,
        # kafka-python's default (librdkafka's is read_committed)
        "isolation.level": "read_uncommitted",
    }
    return ConfluentConsumer(config, kafka.auto_offset_reset)


def new_producer(kafka: KafkaSettings) -> ConfluentProducer:
    return ConfluentProducer({
        **common_config(kafka),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": kafka.linger_ms,
        "batch.size": 256 * 1024,
        # librdkafka's largest request; a record above it is refused at produce()
        "message.max.bytes": kafka.producer_max_request_size,
        # kafka-python's delivery_timeout_ms
        "message.timeout.ms": 120_000,
    })

