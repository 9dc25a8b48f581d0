"""The consumer loop: Kafka in, detectors, findings and dead letters out.

Delivery is at least once. For each polled batch the loop decodes every
message (bad ones become dead letters), runs the detectors, sends findings
and dead letters, waits until the broker has acknowledged all of them, and
only then commits the batch's offsets. A crash therefore loses nothing: the
uncommitted batch is redelivered, and its findings come again with the same
``finding_id``.

With ``state.model_routing`` ``repartition`` (the default with the Kafka state
store) each valid inference event is also forwarded, unchanged, to the
internal repartition topic keyed by its ``model_id``, in the same acknowledged
batch as the findings. The same consumer group consumes that topic, and the
model-scoped detectors run on it, one set per repartition partition: every
model is watched by exactly one replica, with state that is checkpointed and
handed over like any partition's. A forwarder that crashes before its commit
forwards some events again; each copy names its source partition and offset,
and the model stage skips what it has already seen (the high-water offsets
are part of its checkpointed state). [align] With a store, the model stage
merges the copies of its sources in event-time order before the detectors
see them (daemon/align.py); the events it holds are part of the same
checkpoint.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

import msgspec
import structlog
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from daemon.align import ModelStageAlignment
from daemon.bootstrap import Bootstrap
from daemon.context import KafkaContextTable
from daemon.formats import DeadLetter, Format, make_format
from daemon.kafka_io import (
    Consumer,
    OutRecord,
    ProduceFailed,
    Producer,
    Refusal,
    connect,
    dlq_record,
    ensure_topics,
    new_consumer,
    new_producer,
    send_all,
)
from daemon.metrics import Health, Metrics, StatusServer
from daemon.settings import Settings
from daemon.state import (
    Checkpoint,
    KafkaStateStore,
    LocalStateStore,
    StateStore,
    snapshot_detectors,
    spec_fingerprint,
)
from detectors.base import Detector
from detectors.events import BadEvent, Event, InferenceEvent, check_ts_window, event_type_of
from detectors.findings import Finding, Source, encode_finding
from detectors.pipeline import GLOBAL, Pipeline, is_model_partition, model_partition
from playbooks.ocsf import ocsf_records
from playbooks.outbox import OutboxUnavailable
from playbooks.protocol import ResponseSide

__all__ = ["Daemon", "quiet_gc"]

log = structlog.get_logger("mlwatchd.runtime")

#: How often lag and detector gauges are refreshed.
_GAUGE_EVERY_S: Final = 10.0
#: How long one produce attempt may wait for acknowledgements.
_ACK_TIMEOUT_S: Final = 30.0
#: Header on repartitioned copies: "topic:partition:offset" of the original,
#: plus "#item" when the event is one of several in its message.
SOURCE_HEADER: Final = "mlwatchd.source"
#: Dead-letter headers added for formats other than ``contract`` (whose dead
#: letters keep exactly the contract's headers): the format, and the index of
#: the event inside the message when one item of several was refused.
FORMAT_HEADER: Final = "mlwatchd.format"
ITEM_HEADER: Final = "mlwatchd.source.item"
#: gen0 collection threshold after start-up (CPython's default is 700).
_GC_GEN0: Final = 50_000


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.daemon._on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.daemon._on_assigned(list(assigned))


class Daemon:
    """One mlwatchd consumer: run() until request_stop(), then drain and close."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline | None = None,
        alerter: ResponseSide | None = None,
        metrics: Metrics | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.pipeline = pipeline or Pipeline(settings.detector_specs(),
                                             on_error=self._detector_error,
                                             repartitioned=settings.state.repartitioned)
        #: The repartition topic, when model-scoped detectors consume it.
        self._rtopic = (settings.topics.repartition
                        if self.pipeline.repartitioned and self.pipeline.has_model_scope()
                        else None)
        self.alerter = alerter
        # [align] Event-time alignment of the model stage (daemon/align.py): its held
        # events are checkpointed state, so only with a store (none: unaligned).
        state = settings.state
        self._align = (ModelStageAlignment(state.model_stage_max_wait_s,
                                           state.model_stage_max_buffered, self.metrics.registry)
                       if self._rtopic is not None and (state.store == "kafka" or state.dir)
                       else None)
        self.health = Health(settings.observability.stall_after_s)
        self.stopping = stopping or threading.Event()
        self.status: StatusServer | None = None
        self.interactions: StatusServer | None = None
        #: Input topic -> (format name, options); every message is read through it.
        self._inputs = settings.input_formats()
        #: One format instance per input partition: a format's state (a KServe
        #: join) belongs to its partition and moves with the partition's checkpoint.
        self._formats: dict[TopicPartition, Format] = {}
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        #: Next offsets to commit, per partition, for work already acknowledged.
        self._pending: dict[TopicPartition, OffsetAndMetadata] = {}
        self._gauges_at = 0.0
        self._errors_seen: dict[str, int] = {}
        self.processed = 0
        #: Next offset to process per input partition (what the state reflects).
        self._positions: dict[TopicPartition, int] = {}
        self._restored: set[int] = set()
        #: Revoked partitions whose state is kept until the next assignment: an
        #: eager rebalance revokes everything and usually gives most of it back.
        self._parked: dict[int, dict[TopicPartition, int]] = {}
        #: Gained partitions paused until the loop has restored their state
        #: (outside the rebalance callback, which must stay short).
        self._to_restore: dict[int, list[TopicPartition]] = {}
        #: State partitions with no checkpoint yet: saved before their first commit.
        self._unsaved: set[int] = set()
        #: Partitions restored from a checkpoint older than the group's commit: that
        #: commit, which their replay must not move back (a stop mid-replay would
        #: leave the group's offsets lower than they were; the checkpoint says
        #: where the replay is).
        self._floor: dict[TopicPartition, int] = {}
        #: Re-gained input partitions whose start offset is still to be recorded.
        self._to_record: list[TopicPartition] = []
        #: Model partitions: source "topic:partition" -> last source offset seen,
        #: and the item index of that copy when it was one event of several.
        self._seen: dict[int, dict[str, int]] = {}
        self._seen_items: dict[int, dict[str, int]] = {}
        self._fingerprints = {s.name: spec_fingerprint(s) for s in self.pipeline.specs}
        self.store: StateStore | None = None
        if settings.state.store == "local" and settings.state.dir:
            key = settings.state.signing_key
            self.store = LocalStateStore(
                settings.state.dir, settings.kafka.group_id,
                key.get_secret_value().encode() if key is not None else None,
                on_reject=self._rejected)
        self._checkpoint_at = time.monotonic()
        #: The context table on ``topics.context`` (pipeline runs), when a detector uses it.
        self.context: KafkaContextTable | None = None
        if self.pipeline.uses_context():
            key = settings.state.signing_key
            self.context = KafkaContextTable(
                settings.kafka, settings.topics.context,
                key.get_secret_value().encode() if key is not None else None,
                on_reject=self._rejected)
            self.pipeline.use_context(self.context)
        #: Learn-only reading of retained history on a first start (None: off).
        self.bootstrap = (Bootstrap(settings.bootstrap.history_s, self.metrics.registry)
                          if settings.bootstrap.history_s > 0 else None)

    # -- lifecycle ----------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish its batch, commit and exit (signal-safe)."""
        self.stopping.set()

    def run(self) -> int:
        """Consume until stopped. Returns the process exit code."""
        obs = self.settings.observability
        routes = {}
        interactivity = self.settings.playbooks.interactivity
        if interactivity.enabled and self.alerter is not None:
            routes[interactivity.path] = self.alerter.handle_slack_interaction
        cap, timeout = obs.http_max_connections, obs.http_request_timeout_s
        if obs.interactivity_port is not None and routes:
            self.interactions = StatusServer(
                self.metrics, self.health, obs.interactivity_host or obs.http_host,
                obs.interactivity_port, routes, status_pages=False, name="interactivity",
                max_connections=cap, max_per_client=max(1, cap // 4), request_timeout_s=timeout)
            routes = {}
        if obs.http_port is not None:
            self.status = StatusServer(self.metrics, self.health, obs.http_host, obs.http_port,
                                       routes, max_connections=cap,
                                       max_per_client=max(1, cap // 4), request_timeout_s=timeout)
            self.status.start()
        if self.interactions is not None:
            self.interactions.start()
        if self.alerter is not None:
            self.alerter.start()
        log.info("daemon_starting", bootstrap=self.settings.kafka.bootstrap_servers,
                 group=self.settings.kafka.group_id, topics=sorted(self._inputs),
                 detectors=[s.name for s in self.pipeline.specs])
        try:
            if not self._connect():
                return 0
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _connect(self) -> bool:
        kafka = self.settings.kafka
        fail = self.metrics.broker_reconnects.inc
        self.health.reason = "connecting to Kafka"
        self._producer = connect(lambda: new_producer(kafka), "producer", self.stopping,
                                 kafka.reconnect_backoff_max_s, fail)
        if self._producer is None:
            return False
        self._consumer = connect(lambda: new_consumer(kafka), "consumer", self.stopping,
                                 kafka.reconnect_backoff_max_s, fail)
        if self._consumer is None:
            return False
        if not self._internal_topics():
            return False
        topics = sorted(self._inputs) + ([self._rtopic] if self._rtopic else [])
        self._consumer.subscribe(topics=topics, listener=_Rebalance(self))
        return True

    def _internal_topics(self) -> bool:
        """Create the repartition, state and context topics if needed; open the Kafka store
        and the context table."""
        state = self.settings.state
        if self._rtopic is None and state.store != "kafka" and self.context is None:
            return True
        assert self._consumer is not None
        counts = [len(self._consumer.partitions_for_topic(t) or ()) for t in self._inputs]
        topic = self.settings.topics.inference
        inference = (len(self._consumer.partitions_for_topic(topic) or ())
                     if topic in self._inputs else 0)
        wanted: dict[str, tuple[int, dict[str, str]]] = {}
        if self.context is not None:
            wanted[self.context.topic] = (1, {"cleanup.policy": "compact"})
        if self._rtopic is not None:
            wanted[self._rtopic] = (inference or max(counts) or 1, {})
        if state.store == "kafka":
            wanted[state.topic] = (2 * (max(counts) or 1), {"cleanup.policy": "compact"})
        ensured = connect(lambda: ensure_topics(self.settings.kafka, wanted), "admin",
                          self.stopping, self.settings.kafka.reconnect_backoff_max_s,
                          self.metrics.broker_reconnects.inc)
        if ensured is None:
            return False
        if self.context is not None:
            context = self.context
            if not context.signed:
                log.warning("context_unsigned", topic=context.topic,
                            hint="set state.signing_key so that context records are signed")
            if connect(context.start, "context table", self.stopping,
                       self.settings.kafka.reconnect_backoff_max_s,
                       self.metrics.broker_reconnects.inc) is None:
                return False
        if state.store == "kafka":
            assert state.signing_key is not None
            key = state.signing_key.get_secret_value().encode()
            self.store = connect(
                lambda: KafkaStateStore(self.settings.kafka, state.topic,
                                        self.settings.kafka.group_id, key, state.chunk_bytes,
                                        on_reject=self._rejected),
                "state store", self.stopping, self.settings.kafka.reconnect_backoff_max_s,
                self.metrics.broker_reconnects.inc)
            if self.store is None:
                return False
        return True

    def _shutdown(self) -> None:
        consumer, producer = self._consumer, self._producer
        try:
            if consumer is not None:
                self._checkpoint(sorted(self._restored))
                self._commit()
                self._restored.clear()  # close() may revoke: nothing left to save
                consumer.close(autocommit=False)
        except Exception as exc:
            log.warning("consumer_close_failed", error=str(exc))
        if producer is not None:
            try:
                producer.flush(timeout=10)
                producer.close(timeout=10)
            except Exception as exc:
                log.warning("producer_close_failed", error=str(exc))
        if self.store is not None:
            self.store.close()
        if self.context is not None:
            self.context.stop()
        if self.alerter is not None:
            undelivered = self.alerter.stop(timeout=10.0)
            if undelivered:
                log.error("alerts_undelivered_at_exit", count=undelivered)
        if self.status is not None:
            self.status.stop()
        if self.interactions is not None:
            self.interactions.stop()
        log.info("daemon_stopped", processed=self.processed)

    # -- the loop -----------------------------------------------------------

    def _loop(self) -> None:
        assert self._consumer is not None
        kafka = self.settings.kafka
        self.health.reason = "joining consumer group"
        while not self.stopping.is_set():
            self.health.beat()
            try:
                batch = self._consumer.poll(timeout_ms=kafka.poll_timeout_ms,
                                            max_records=kafka.max_poll_records)
            except KafkaError as exc:
                log.warning("poll_failed", error=f"{type(exc).__name__}: {exc}")
                self.stopping.wait(1.0)
                continue
            if not self.health.ready:
                self.health.ready, self.health.reason = True, "consuming"
            if self._to_restore:
                self._restore_gained()
            if self._to_record:
                todo, self._to_record = self._to_record, []
                self._record_start(todo)
            if batch or (self._align is not None and self._align.holding()):  # [align]
                self._process(batch)
            now = time.monotonic()
            if now - self._gauges_at >= _GAUGE_EVERY_S:
                self._gauges_at = now
                self._update_gauges()

    def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        findings: list[Finding] = []
        dead: list[OutRecord] = []
        count = 0
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        forward: list[OutRecord] | None = [] if self._rtopic is not None else None
        for tp, messages in batch.items():
            if not messages:
                continue
            if tp.topic == self._rtopic:
                partition = model_partition(tp.partition)
                events = list(self._unseen(partition, _origins(messages),
                                           self._decoded(tp, messages, dead)))
                if self._align is not None:  # [align] held; released below in event-time order
                    self._align.push(partition, events, time.monotonic())
                    events = []
            else:
                if tp.topic not in self._inputs:
                    continue
                partition = tp.partition
                events = self._decoded(tp, messages, dead, forward)
            if self.bootstrap is not None and self.bootstrap.learning \
                    and tp.topic != self._rtopic:
                # Retained history on a first start: the detectors learn it,
                # its findings are dropped (counted); the rest is judged.
                history = self.bootstrap.split(tp, messages)
                if history:
                    cut = messages[history - 1].offset
                    old = [e for e in events if e[1].offset <= cut]
                    events = events[len(old):]
                    self.bootstrap.learnt.inc(len(old))
                    for kind, run in _runs(old):
                        self.bootstrap.suppressed.inc(
                            len(self.pipeline.process_many(kind, partition, run)))
            for kind, run in _runs(events):
                findings.extend(self.pipeline.process_many(kind, partition, run))
            self.metrics.events.labels(tp.topic).inc(len(messages))
            count += len(messages)
            offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, None, -1)
        if self._align is not None:  # [align] what is due, in one order whatever the arrivals
            for partition, released in self._align.release(time.monotonic(), self._restored):
                for kind, run in _runs(released):
                    findings.extend(self.pipeline.process_many(kind, partition, run))
        records: list[OutRecord] = [
            (self.settings.topics.findings, f.entity.id.encode(), encode_finding(f), None)
            for f in findings
        ]
        records.extend(ocsf_records(findings, self.settings.topics.ocsf))
        records.extend(dead)
        if forward:
            records.extend(forward)
            self.metrics.repartitioned.inc(len(forward))
        if records and not self._deliver(records):
            return  # stopping while the broker refuses: do not commit; redelivered later
        if self.context is not None:  # the runs this batch published, before its commit
            self.context.flush(_ACK_TIMEOUT_S)
        for finding in findings:
            self.metrics.findings.labels(finding.detector, finding.severity).inc()
            log.info("finding", finding_id=finding.finding_id, detector=finding.detector,
                     kind=finding.kind, severity=finding.severity,
                     entity_type=finding.entity.type, model_id=finding.model_id)
        # Before the commit: the response outbox records them durably (and
        # ignores a redelivered finding), so a crash in between loses nothing.
        if findings and self.alerter is not None and not self._submit(findings):
            return  # stopping while the outbox refuses: do not commit; redelivered later
        self._positions.update((tp, meta.offset) for tp, meta in offsets.items())
        if self.store is not None:
            # State and the offsets it reflects are saved *before* the commit: a
            # restore seeks to the checkpoint's offsets, so it is consistent
            # whether the crash came before or after the commit. A partition
            # with no checkpoint at all is saved before its first commit.
            if time.monotonic() - self._checkpoint_at >= self.settings.state.checkpoint_every_s:
                self._checkpoint(sorted(self._restored))
            elif self._unsaved:
                self._checkpoint(sorted(self._unsaved))
        self._pending.update((tp, self._not_back(tp, meta)) for tp, meta in offsets.items())
        self._commit()
        self.processed += count
        if count:  # [align] not the rounds that only release held events
            self.metrics.batch_events.observe(count)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _not_back(self, tp: TopicPartition, meta: OffsetAndMetadata) -> OffsetAndMetadata:
        """The offset to commit: the group's commit while a replay is still below it
        (the state's own position, in the checkpoint, stays the replay's)."""
        floor = self._floor.get(tp)
        if floor is None:
            return meta
        if meta.offset >= floor:
            del self._floor[tp]
            return meta
        return OffsetAndMetadata(floor, None, -1)

    def _format(self, tp: TopicPartition) -> Format:
        """The format reading ``tp`` (made on first use; the repartition topic's is contract)."""
        fmt = self._formats.get(tp)
        if fmt is None:
            limit = self.settings.kafka.max_message_bytes
            name, options = (("contract", {"event_type": "inference"}) if tp.topic == self._rtopic
                             else self._inputs[tp.topic])
            # The Kafka message limit is every format's default size limit.
            fmt = self._formats[tp] = make_format(name, {"max_bytes": limit, **options})
        return fmt

    def _decoded(
        self, tp: TopicPartition, messages: list[Any], dead: list[OutRecord],
        forward: list[OutRecord] | None = None,
    ) -> list[tuple[Event, Source]]:
        """Events of a partition's messages, read by the topic's format; the rest dead letters.

        A message gives zero or more events (a KServe request waits for its
        response; a batch of N instances gives N) and dead letters, each with
        its item index when one event of several was refused. With
        ``forward``, valid inference events that a model-scoped detector
        wants are also copied there, keyed by model, for the repartition topic.
        """
        future_skew, max_age = self.settings.input.max_future_skew_s, self.settings.input.max_age_s
        now = time.time()
        topic, partition = tp.topic, tp.partition
        fmt = self._format(tp)
        contract = fmt.name == "contract"
        wants = self.pipeline.model_scope_wants
        rtopic = self._rtopic
        out: list[tuple[Event, Source]] = []
        for message in messages:
            value = message.value
            try:
                results = fmt.decode(value, message.headers or [], message.timestamp)
            except Exception as exc:  # a format never raises; if one does, one message pays
                results = [DeadLetter(fmt.name, "undecodable", f"{type(exc).__name__}: {exc}")]
            for result in results:
                if isinstance(result, DeadLetter):
                    self._dead_letter(dead, tp, message, fmt.name, result.reason, result.detail,
                                      result.item, contract)
                    continue
                event, item = result.event, result.item
                try:
                    check_ts_window(event.ts, now, future_skew, max_age)  # type: ignore[arg-type]
                except BadEvent as exc:
                    self._dead_letter(dead, tp, message, fmt.name, exc.reason, exc.detail, item,
                                      contract)
                    continue
                if forward is not None and isinstance(event, InferenceEvent) \
                        and wants(event.model_id):
                    origin = f"{topic}:{partition}:{message.offset}" + (
                        f"#{item}" if item is not None else "")
                    # An event's own copy of our header is dropped: a producer must
                    # not be able to make the model stage skip events.
                    headers = [h for h in message.headers or () if h[0] != SOURCE_HEADER]
                    # Contract events go on unchanged; others as the contract event read.
                    copy = value if contract else msgspec.json.encode(event)
                    forward.append((rtopic, event.model_id.encode(), copy,  # type: ignore[arg-type]
                                    [*headers, (SOURCE_HEADER, origin.encode())]))
                out.append((event, Source(topic, partition, message.offset, item)))
        return out

    def _dead_letter(
        self, dead: list[OutRecord], tp: TopicPartition, message: Any, fmt: str, reason: str,
        detail: str, item: int | None, contract: bool,
    ) -> None:
        """One dead letter: the message unchanged, with the contract's headers (and, for
        other formats, the format's name and the refused event's item index)."""
        topic, partition = tp.topic, tp.partition
        record = dlq_record(self.settings.topics.dlq, topic, partition, message.offset,
                            message.key, message.value, message.headers, reason, detail)
        if not contract:
            extra = [(FORMAT_HEADER, fmt.encode())]
            if item is not None:
                extra.append((ITEM_HEADER, str(item).encode()))
            record = (record[0], record[1], record[2], [*(record[3] or ()), *extra])
        dead.append(record)
        self.metrics.bad_events.labels(topic, reason).inc()
        self.metrics.dlq.inc()
        log.warning("dead_letter", topic=topic, partition=partition, offset=message.offset,
                    format=fmt, item=item, reason=reason, detail=detail[:200])

    def _unseen(
        self, partition: int, origins: dict[int, tuple[str, int, int | None]],
        items: Iterable[tuple[Event, Source]],
    ) -> Iterator[tuple[Event, Source]]:
        """Repartitioned events not yet seen, with their original source.

        Copies from one source partition arrive in (offset, item) order (one
        idempotent producer per batch), except that a forwarder which crashed
        before committing forwards a stretch again: anything at or below the
        source's high-water position is such a copy.
        """
        seen = self._seen.setdefault(partition, {})
        seen_items = self._seen_items.setdefault(partition, {})
        for event, source in items:
            origin = origins.get(source.offset)
            if origin is None:
                yield event, source
                continue
            key, offset, item = origin
            last = seen.get(key, -1)
            if offset < last or (offset == last and (
                    item is None or key not in seen_items or item <= seen_items[key])):
                self.metrics.repartition_duplicates.inc()
                continue
            seen[key] = offset
            if item is None:
                seen_items.pop(key, None)
            else:
                seen_items[key] = item
            topic, _, number = key.rpartition(":")
            yield event, Source(topic, int(number), offset, item)

    def _deliver(self, records: list[OutRecord]) -> bool:
        """Send until every record is acknowledged; False if asked to stop first."""
        delay = 0.5
        pending = records
        while True:
            assert self._producer is not None
            try:
                self._report_refused(send_all(self._producer, pending, _ACK_TIMEOUT_S))
                if delay > 0.5:
                    self.health.ready, self.health.reason = True, "consuming"
                    log.info("produce_recovered")
                return True
            except ProduceFailed as exc:
                self._report_refused(exc.refused)
                pending = exc.failed
                error = exc.error
            except KafkaError as exc:
                error = exc
            self.metrics.produce_retries.inc()
            self.health.ready, self.health.reason = False, "cannot write findings to Kafka"
            log.warning("produce_failed", records=len(pending), retry_in_s=round(delay, 1),
                        error=f"{type(error).__name__}: {error}")
            if self.stopping.wait(delay):
                return False
            self.health.beat()
            delay = min(delay * 2, self.settings.kafka.reconnect_backoff_max_s)
            if delay >= 4:
                # An idempotent producer does not recover from a broker that lost
                # its state (a restarted broker): start a fresh one.
                self._producer.close(timeout=1)
                self._producer = connect(lambda: new_producer(self.settings.kafka), "producer",
                                         self.stopping, self.settings.kafka.reconnect_backoff_max_s,
                                         self.metrics.broker_reconnects.inc)
                if self._producer is None:
                    return False

    def _report_refused(self, refusals: list[Refusal]) -> None:
        """Records refused for good are not retried (that would stall the partition)."""
        for refusal in refusals:
            topic, key, value, _ = refusal.record
            outcome = "truncated" if refusal.truncated else "dropped"
            self.metrics.refused.labels(topic, outcome).inc()
            log.error("record_refused", topic=topic, outcome=outcome,
                      key_bytes=len(key or b""), value_bytes=len(value or b""),
                      error=f"{type(refusal.error).__name__}: {refusal.error}"[:300])

    def _submit(self, findings: list[Finding]) -> bool:
        """Hand every finding to the response engine; False if asked to stop first.

        An outbox that cannot record one (locked by another process, disk
        full) raises ``OutboxUnavailable``: the batch is not committed, and
        that finding and the rest are submitted again after a backoff.
        """
        assert self.alerter is not None
        delay, done = 0.5, 0
        while done < len(findings):
            try:
                self.alerter.submit(findings[done])
                done += 1
                continue
            except OutboxUnavailable as exc:
                error = exc
            self.health.ready, self.health.reason = False, "cannot record findings in the outbox"
            log.warning("submit_failed_batch_held", findings=len(findings) - done,
                        retry_in_s=round(delay, 1), error=str(error))
            if self.stopping.wait(delay):
                return False
            self.health.beat()
            delay = min(delay * 2, self.settings.kafka.reconnect_backoff_max_s)
        if delay > 0.5:
            self.health.ready, self.health.reason = True, "consuming"
            log.info("submit_recovered")
        return True

    def _commit(self) -> bool:
        """Commit acknowledged work; True when everything processed is committed."""
        if not self._pending or self._consumer is None:
            return True
        offsets, self._pending = self._pending, {}
        try:
            self._consumer.commit(offsets=offsets)
            self.metrics.commits.labels("ok").inc()
            return True
        except CommitFailedError as exc:
            # The group rebalanced: the new owner resumes from the last commit.
            self.metrics.commits.labels("failed").inc()
            log.warning("commit_failed_rebalanced", partitions=len(offsets), error=str(exc))
        except KafkaError as exc:
            self.metrics.commits.labels("failed").inc()
            self._pending = {**offsets, **self._pending}
            log.warning("commit_failed", partitions=len(offsets), error=str(exc))
        return False

    # -- state checkpoints ---------------------------------------------------

    def _checkpoint(self, partitions: list[int]) -> None:
        """Save the state of ``partitions`` and the model-scoped state, with offsets."""
        if self.store is None:
            return
        started = time.perf_counter()
        size = 0
        positions = dict(self._positions)
        try:
            for p in partitions:
                if p == GLOBAL:
                    continue
                offsets = {tp.topic: off for tp, off in positions.items()
                           if self._state_partition(tp) == p}
                size += self.store.save(Checkpoint(
                    p, offsets, snapshot_detectors(self.pipeline, p, self._fingerprints),
                    sources=dict(self._seen.get(p, {})),
                    source_items=dict(self._seen_items.get(p, {})),
                    formats=self._format_states(p),
                    aligned=self._align.snapshot(p) if self._align is not None else {}))  # [align]
            if not self.pipeline.repartitioned:
                size += self.store.save(Checkpoint(
                    GLOBAL, {f"{tp.topic}:{tp.partition}": off for tp, off in positions.items()},
                    snapshot_detectors(self.pipeline, GLOBAL, self._fingerprints)))
        except OSError as exc:
            log.error("checkpoint_failed", error=str(exc))
            return
        self._unsaved.difference_update(partitions)
        if set(partitions) >= self._restored - {GLOBAL}:
            self._checkpoint_at = time.monotonic()
        log.debug("checkpoint_saved", partitions=partitions, bytes=size,
                 seconds=round(time.perf_counter() - started, 3))

    def _rejected(self, record: str, reason: str) -> None:
        """An internal record failed authentication or validation (stores call this)."""
        self.metrics.internal_rejected.labels(record, reason).inc()

    def _restore(self, partition: int) -> Checkpoint | None:
        assert self.store is not None
        try:
            checkpoint = self.store.load(partition)
        except ValueError as exc:
            log.error("checkpoint_unreadable", partition=partition, error=str(exc))
            self.metrics.state_restore_failed.labels("*", "checkpoint").inc()
            return None
        if checkpoint is None:
            return None
        usable = {name: state for name, (fp, state) in checkpoint.detectors.items()
                  if fp == self._fingerprints.get(name)}
        stale = sorted(set(checkpoint.detectors) - set(usable))
        if stale:
            log.warning("checkpoint_config_changed", partition=partition, relearning=stale)
        for name, reason in self.pipeline.restore(partition, usable):
            log.error("detector_state_unreadable", partition=partition, detector=name,
                      reason=reason, action="relearning")
            self.metrics.state_restore_failed.labels(name, reason).inc()
        if is_model_partition(partition):
            self._seen[partition] = dict(getattr(checkpoint, "sources", {}))
            self._seen_items[partition] = dict(getattr(checkpoint, "source_items", {}))
            if self._align is not None:  # [align] the held events continue from the checkpoint
                try:
                    self._align.restore(partition, checkpoint.aligned,
                                        time.monotonic())
                except ValueError as exc:
                    log.error("alignment_state_unreadable", partition=partition, error=str(exc))
        self._restore_formats(partition, getattr(checkpoint, "formats", {}))
        return checkpoint

    def _format_states(self, partition: int) -> dict[str, dict[str, Any]]:
        """Input topic -> {format, state} of the stateful formats of ``partition``."""
        out: dict[str, dict[str, Any]] = {}
        for tp, fmt in self._formats.items():
            if tp.partition == partition and tp.topic != self._rtopic:
                state = fmt.snapshot()
                if state:
                    out[tp.topic] = {"format": fmt.name, "state": state}
        return out

    def _restore_formats(self, partition: int, saved: dict[str, dict[str, Any]]) -> None:
        """Continue each topic's format state; a format changed since, or a bad state, restarts."""
        self._drop_formats(partition)
        for topic, entry in saved.items():
            if topic not in self._inputs or not isinstance(entry, dict):
                continue
            fmt = self._format(TopicPartition(topic, partition))
            if entry.get("format") != fmt.name:
                log.warning("format_state_skipped", topic=topic, partition=partition,
                            saved=str(entry.get("format")), now=fmt.name)
                continue
            try:
                fmt.restore(entry.get("state") or {})
            except Exception as exc:  # a state this version cannot read: start afresh
                self._formats.pop(TopicPartition(topic, partition), None)
                log.error("format_state_unreadable", topic=topic, partition=partition,
                          error=f"{type(exc).__name__}: {exc}"[:300])

    def _drop_formats(self, partition: int) -> None:
        for tp in [tp for tp in self._formats if tp.partition == partition
                   and tp.topic != self._rtopic]:
            del self._formats[tp]

    def _state_partition(self, tp: TopicPartition) -> int:
        """Input partitions share their number; repartition partitions are model partitions."""
        return model_partition(tp.partition) if tp.topic == self._rtopic else tp.partition

    # -- rebalance and gauges ------------------------------------------------

    def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Commit what is acknowledged and park the state; nothing slow in here.

        The callback runs inside the group protocol: restoring or saving a
        large checkpoint here delays the rejoin, and with it the whole group
        (a soak with 35 MB partitions livelocked this way). The state is
        consistent with its own positions, so it is parked: if the
        partition comes back in the next assignment it simply continues;
        otherwise it is dropped, and the new owner restores the last
        checkpoint and replays from its offsets.
        """
        self._commit()
        lost = {self._state_partition(tp) for tp in revoked}
        for partition in sorted(lost & self._restored):
            self._parked[partition] = {tp: off for tp, off in self._positions.items()
                                       if self._state_partition(tp) == partition}
            self._restored.discard(partition)
        for partition in lost:
            self._to_restore.pop(partition, None)
        for tp in revoked:
            self._positions.pop(tp, None)
            self._floor.pop(tp, None)
        self._to_record = [tp for tp in self._to_record if tp not in set(revoked)]
        log.info("partitions_revoked", partitions=[f"{t.topic}:{t.partition}" for t in revoked])

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.metrics.assigned.set(len(assigned))
        log.info("partitions_assigned", partitions=[f"{t.topic}:{t.partition}" for t in assigned])
        assert self._consumer is not None
        by_partition: dict[int, list[TopicPartition]] = {}
        for tp in assigned:
            by_partition.setdefault(self._state_partition(tp), []).append(tp)
        parked, self._parked = self._parked, {}
        for partition, tps in sorted(by_partition.items()):
            if partition in self._restored:
                continue
            kept = parked.pop(partition, None)
            if kept is not None:
                # Ours again: the state in memory continues where it stopped.
                for tp in tps:
                    if tp in kept:
                        self._consumer.seek(tp, kept[tp])
                        self._positions[tp] = kept[tp]
                self._restored.add(partition)
                self._to_record.extend(tp for tp in tps if tp not in kept)
            elif self.store is not None or self.bootstrap is not None:
                self._consumer.pause(*tps)  # until the loop restored its state
                self._to_restore[partition] = tps
            else:
                self._restored.add(partition)
        for partition, gone in parked.items():  # went to another replica
            self.pipeline.drop(partition)
            self._drop_formats(partition)
            if self.bootstrap is not None:
                self.bootstrap.forget(list(gone))
            self._seen.pop(partition, None)
            self._seen_items.pop(partition, None)
            if self._align is not None:  # [align]
                self._align.drop(partition)
            self._unsaved.discard(partition)
        if self.store is not None and GLOBAL not in self._restored \
                and not self.pipeline.repartitioned:
            self._to_restore[GLOBAL] = []

    def _restore_gained(self) -> None:
        """Restore the state of newly gained partitions, seek, and resume them."""
        assert self._consumer is not None
        todo, self._to_restore = self._to_restore, {}
        for partition, tps in sorted(todo.items()):
            checkpoint = self._restore(partition) if self.store is not None else None
            self._restored.add(partition)
            if partition == GLOBAL:
                continue
            if checkpoint is None:
                if self.store is not None:
                    self._unsaved.add(partition)
                if self.bootstrap is not None:
                    inputs = [tp for tp in tps if tp.topic in self._inputs]
                    self.bootstrap.start(self._consumer, inputs, self._committed(inputs))
            else:
                committed = self._committed(tps)
                for tp in tps:
                    offset = checkpoint.offsets.get(tp.topic)
                    if offset is None:
                        continue  # its state has not seen this topic: see below
                    # Resume where the state was saved: anything committed after
                    # it is processed again, so state == never stopped.
                    self._consumer.seek(tp, offset)
                    self._positions[tp] = offset
                    if committed.get(tp, -1) > offset:
                        self._floor[tp] = committed[tp]
                    if offset > committed.get(tp, -1):
                        # The last owner saved this far but could not commit:
                        # commit it now, or the lag stays even with nothing to read.
                        self._pending[tp] = OffsetAndMetadata(offset, None, -1)
                log.info("checkpoint_restored", partition=partition,
                         offsets=checkpoint.offsets, saved_at=checkpoint.saved_at)
            self._record_start(tps)
            self._consumer.resume(*tps)
        self._commit()

    def _record_start(self, tps: list[TopicPartition]) -> None:
        """Record where the state starts on topics it has not consumed yet.

        A checkpoint must name an offset for *every* topic of its partition:
        one written after only the access events were processed, restored
        after the inference events were processed and committed, would
        otherwise resume inference at the commit and never feed those events
        to the state (the soak caught this as findings that differed from a
        clean run).
        """
        assert self._consumer is not None
        for tp in tps:
            if tp not in self._positions:
                try:
                    self._positions[tp] = self._consumer.position(tp)
                except KafkaError as exc:
                    log.warning("position_unknown", partition=str(tp), error=str(exc))

    def _committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self._consumer is not None
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            try:
                offset = self._consumer.committed(tp)
            except KafkaError as exc:
                log.warning("committed_offset_unknown", partition=str(tp), error=str(exc))
                continue
            if offset is not None:
                out[tp] = offset
        return out

    def _update_gauges(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is None:
                    continue
                try:
                    position = consumer.position(tp, timeout_ms=1000)
                except Exception:
                    continue
                if position is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(high - position)
        totals: dict[tuple[str, str], float] = {}
        for _, detector in self.pipeline.detectors():
            for stat, value in detector.stats().items():
                key = (detector.name, stat)
                totals[key] = totals.get(key, 0.0) + value
        for (name, stat), value in totals.items():
            self.metrics.detector_gauge.labels(name, stat).set(value)
        counters: dict[tuple[str, str, str], int] = {}
        for tp, fmt in list(self._formats.items()):
            for stat, count in fmt.stats().items():
                where = (tp.topic, fmt.name, stat)
                counters[where] = counters.get(where, 0) + count
        for (topic, name, stat), count in counters.items():
            self.metrics.format_gauge.labels(topic, name, stat).set(count)

    def _detector_error(self, detector: Detector, event: Event | None, exc: Exception) -> None:
        self.metrics.detector_errors.labels(detector.name).inc()
        seen = self._errors_seen.get(detector.name, 0) + 1
        self._errors_seen[detector.name] = seen
        if seen & (seen - 1) == 0:  # 1st, 2nd, 4th, 8th...: visible, but no log flood
            log.error("detector_failed", detector=detector.name, occurrences=seen,
                      error=f"{type(exc).__name__}: {exc}")


def quiet_gc() -> None:
    """Shorter, rarer GC pauses once start-up is done (issue #16); ``mlwatchd run`` calls it.

    Everything alive now (modules, detectors, settings) is moved to a
    permanent generation the collector no longer scans, and the gen0
    threshold goes from 700 to 50,000 allocations: a poll of 2,000 events no
    longer triggers dozens of gen0 collections that each walk the young heap.
    Process-wide, hence not in :meth:`Daemon.run` (tests run daemons in-process).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0, gen1, gen2)
    log.info("gc_tuned", frozen_objects=gc.get_freeze_count(), thresholds=gc.get_threshold())


def _origins(messages: list[Any]) -> dict[int, tuple[str, int, int | None]]:
    """Repartition offset -> ("topic:partition", offset, item) of the original event."""
    out: dict[int, tuple[str, int, int | None]] = {}
    for message in messages:
        for name, value in message.headers or ():
            if name == SOURCE_HEADER:
                text, _, item = value.decode("ascii", "replace").partition("#")
                key, _, offset = text.rpartition(":")
                if key and offset.isdigit() and (not item or item.isdigit()):
                    out[message.offset] = (key, int(offset), int(item) if item else None)
    return out


def _runs(events: list[tuple[Event, Source]]) -> Iterator[tuple[str, list[tuple[Event, Source]]]]:
    """Consecutive events of one kind, in order (a CloudTrail topic holds audit and access)."""
    run: list[tuple[Event, Source]] = []
    kind = ""
    for pair in events:
        this = event_type_of(pair[0])
        if this != kind and run:
            yield kind, run
            run = []
        kind = this
        run.append(pair)
    if run:
        yield kind, run
