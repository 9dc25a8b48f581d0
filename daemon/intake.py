"""Intake: Kafka messages in, events and dead letters out, read by each topic's format.

Every input topic is read through its configured format (``input.formats``;
the contract formats by default). A message gives zero or more events (a
KServe request waits for its response; a batch of N instances gives N) and
dead letters, each with its item index when one event of several was
refused. An event outside the accepted time window is a dead letter too.
Each input partition has its own format instance: a format's state (a
KServe join) belongs to its partition and moves with its checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

import structlog
from kafka import TopicPartition

from daemon.formats import DeadLetter, Format, make_format
from daemon.formats.contract import ContractFormat
from daemon.kafka_io import OutRecord, dlq_record
from daemon.metrics import Metrics
from detectors.events import BadEvent, Event, check_ts_window
from detectors.findings import Source

__all__ = ["FORMAT_HEADER", "ITEM_HEADER", "Decoded", "Intake", "KafkaRecord"]

log = structlog.get_logger("mlwatchd.runtime")

#: Dead-letter headers added for formats other than ``contract`` (whose dead
#: letters keep exactly the contract's headers): the format, and the index of
#: the event inside the message when one item of several was refused.
FORMAT_HEADER: Final = "mlwatchd.format"
ITEM_HEADER: Final = "mlwatchd.source.item"

#: What one partition's messages gave: events with their sources, in order.
Decoded = list[tuple[Event, Source]]


class KafkaRecord(Protocol):
    """A consumed message as either client gives it (kafka-python's ``ConsumerRecord``,
    :mod:`daemon.kafka_confluent`'s record)."""

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int | None: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class Intake:
    """Decodes messages of the input topics (and of the repartition topic, as contract).

    ``inputs``: input topic -> (format name, options). ``repartition_topic``:
    read as contract inference events, and never part of a partition's format
    state. ``max_bytes``: every format's default size limit (the Kafka limit).
    """

    def __init__(
        self,
        inputs: Mapping[str, tuple[str, dict[str, Any]]],
        *,
        dlq_topic: str,
        metrics: Metrics,
        max_bytes: int,
        max_future_skew_s: float | None,
        max_age_s: float | None,
        repartition_topic: str | None = None,
        join_groups: Mapping[str, str] | None = None,
    ) -> None:
        self.inputs = dict(inputs)
        #: Input topic -> join group: the group's topics share one format
        #: instance per partition number (a request here, its response there).
        self.join_groups = dict(join_groups or {})
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.max_future_skew_s = max_future_skew_s
        self.max_age_s = max_age_s
        self.repartition_topic = repartition_topic
        #: One format instance per partition read (made on first use; shared by
        #: the topics of a join group with the same partition number).
        self.formats: dict[TopicPartition, Format] = {}

    def format(self, tp: TopicPartition) -> Format:
        """The format reading ``tp`` (made on first use; the repartition topic's is contract)."""
        fmt = self.formats.get(tp)
        if fmt is None:
            fmt = self._joined(tp)
            if fmt is None:
                name, options = (("contract", {"event_type": "inference"})
                                 if tp.topic == self.repartition_topic else self.inputs[tp.topic])
                fmt = make_format(name, {"max_bytes": self.max_bytes, **options})
            self.formats[tp] = fmt
        return fmt

    def _joined(self, tp: TopicPartition) -> Format | None:
        """The instance another topic of ``tp``'s join group already reads this partition with."""
        group = self.join_groups.get(tp.topic)
        if group is None:
            return None
        for other, fmt in self.formats.items():
            if other.partition == tp.partition and self.join_groups.get(other.topic) == group:
                return fmt
        return None

    def decode(self, tp: TopicPartition, messages: Sequence[KafkaRecord],
               dead: list[OutRecord]) -> Decoded:
        """Events of a partition's messages, in order; the rest appended to ``dead``."""
        now = time.time()
        topic, partition = tp.topic, tp.partition
        fmt = self.format(tp)
        contract = fmt.name == "contract"
        future_skew, max_age = self.max_future_skew_s, self.max_age_s
        # The hot path: a contract topic of one kind, a bytes value that decodes
        # into an event inside the time window. Anything else (an error, a
        # tombstone, a time outside the window) takes the format's own path
        # below, which decodes it again and names the dead letter's reason.
        fast = fmt.fast_path() if isinstance(fmt, ContractFormat) else None
        fast_decode, largest = fast if fast is not None else (None, 0)
        ahead = math.inf if future_skew is None else future_skew
        behind = math.inf if max_age is None else max_age
        out: Decoded = []
        append = out.append
        for message in messages:
            value = message.value
            if fast_decode is not None and type(value) is bytes and 0 < len(value) <= largest:
                try:
                    event = fast_decode(value)
                except Exception:  # the slow path below names the reason
                    pass
                else:
                    ts: float = event.ts  # type: ignore[assignment]
                    if ts - now <= ahead and now - ts <= behind:
                        append((event, Source(topic, partition, message.offset)))
                        continue
            try:
                # A tombstone's None goes in as it is: the format dead-letters it.
                results = fmt.decode(message.value,  # type: ignore[arg-type]
                                     message.headers or [], message.timestamp)
            except Exception as exc:  # a format never raises; if one does, one message pays
                results = [DeadLetter(fmt.name, "undecodable", f"{type(exc).__name__}: {exc}")]
            for result in results:
                if isinstance(result, DeadLetter):
                    dead.append(self.dead_letter(tp, message, fmt.name, result.reason,
                                                 result.detail, result.item, contract))
                    continue
                event, item = result.event, result.item
                try:
                    check_ts_window(event.ts, now, future_skew, max_age)  # type: ignore[arg-type]
                except BadEvent as exc:
                    dead.append(self.dead_letter(tp, message, fmt.name, exc.reason, exc.detail,
                                                 item, contract))
                    continue
                out.append((event, Source(topic, partition, message.offset, item)))
        return out

    def dead_letter(
        self, tp: TopicPartition, message: KafkaRecord, fmt: str, reason: str, detail: str,
        item: int | None, contract: bool,
    ) -> OutRecord:
        """One dead letter: the message unchanged, with the contract's headers (and, for
        other formats, the format's name and the refused event's item index); counted."""
        topic, partition = tp.topic, tp.partition
        record = dlq_record(self.dlq_topic, topic, partition, message.offset,
                            message.key, message.value, message.headers, reason, detail)
        if not contract:
            extra = [(FORMAT_HEADER, fmt.encode())]
            if item is not None:
                extra.append((ITEM_HEADER, str(item).encode()))
            record = (record[0], record[1], record[2], [*(record[3] or ()), *extra])
        self.metrics.bad_events.labels(topic, reason).inc()
        self.metrics.dlq.inc()
        log.warning("dead_letter", topic=topic, partition=partition, offset=message.offset,
                    format=fmt, item=item, reason=reason, detail=detail[:200])
        return record

    # -- format state, per input partition number ------------------------------

    def _own(self, partition: int) -> list[TopicPartition]:
        return [tp for tp in self.formats
                if tp.partition == partition and tp.topic != self.repartition_topic]

    def snapshot(self, partition: int) -> dict[str, dict[str, Any]]:
        """Input topic -> {format, state} of the stateful formats of ``partition``."""
        out: dict[str, dict[str, Any]] = {}
        saved: set[int] = set()
        for tp in self._own(partition):
            fmt = self.formats[tp]
            if id(fmt) in saved:  # a join group's shared instance: saved once
                continue
            saved.add(id(fmt))
            state = fmt.snapshot()
            if state:
                out[tp.topic] = {"format": fmt.name, "state": state}
        return out

    def restore(self, partition: int, saved: Mapping[str, Any]) -> None:
        """Continue each topic's format state; a format changed since, or a bad state, restarts."""
        self.drop(partition)
        for topic, entry in saved.items():
            if topic not in self.inputs or not isinstance(entry, dict):
                continue
            tp = TopicPartition(topic, partition)
            fmt = self.format(tp)
            if entry.get("format") != fmt.name:
                log.warning("format_state_skipped", topic=topic, partition=partition,
                            saved=str(entry.get("format")), now=fmt.name)
                continue
            try:
                fmt.restore(entry.get("state") or {})
            except Exception as exc:  # a state this version cannot read: start afresh
                self.formats.pop(tp, None)
                log.error("format_state_unreadable", topic=topic, partition=partition,
                          error=f"{type(exc).__name__}: {exc}"[:300])

    def drop(self, partition: int) -> None:
        """Forget the format state of input partition ``partition`` (all its topics)."""
        for tp in self._own(partition):
            del self.formats[tp]

    def stats(self) -> dict[tuple[str, str, str], int]:
        """(topic, format, counter) -> count, summed over the topic's partitions."""
        counters: dict[tuple[str, str, str], int] = {}
        counted: set[int] = set()
        for tp, fmt in list(self.formats.items()):
            if id(fmt) in counted:  # a join group's shared instance: under its first topic
                continue
            counted.add(id(fmt))
            for stat, count in fmt.stats().items():
                where = (tp.topic, fmt.name, stat)
                counters[where] = counters.get(where, 0) + count
        return counters
