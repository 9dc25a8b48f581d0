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
are part of its checkpointed state). With a store, the model stage then
merges the copies of its sources in event-time order before the detectors
see them (:mod:`daemon.align`); the events it holds are part of the same
checkpoint.

Its parts, each testable alone: :mod:`daemon.intake` (formats, dead
letters), :mod:`daemon.model_stage` (forwarding by model, skipping copies
already seen), :mod:`daemon.delivery` (produce until acknowledged, the
outbox hand-off), :mod:`daemon.checkpoints` (a state partition's state),
:mod:`daemon.rebalance` (the rebalance state machine, commits),
:mod:`daemon.commit` (a batch's output out, then its commit). This module
is the loop that joins them, and the process lifecycle.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import structlog
from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from daemon.align import ModelStageAlignment
from daemon.bootstrap import Bootstrap
from daemon.checkpoints import Checkpoints, state_partition_of
from daemon.commit import BatchCommit
from daemon.context import KafkaContextTable
from daemon.delivery import FindingHandoff, RecordDelivery
from daemon.intake import FORMAT_HEADER, ITEM_HEADER, Decoded, Intake, KafkaRecord
from daemon.kafka_io import Consumer, OutRecord, new_consumer, new_producer
from daemon.metrics import DetectorErrors, Health, Metrics
from daemon.model_stage import SOURCE_HEADER, ModelStage
from daemon.rebalance import Offsets, Ownership, RebalanceListener
from daemon.settings import Settings
from daemon.startup import Retrier, open_internal, status_servers
from daemon.state import LocalStateStore
from daemon.status_server import StatusServer
from detectors.events import Event, event_type_of
from detectors.findings import Finding, Source
from detectors.pipeline import Pipeline
from playbooks.protocol import ResponseSide

__all__ = ["FORMAT_HEADER", "ITEM_HEADER", "SOURCE_HEADER", "Daemon", "quiet_gc"]

log = structlog.get_logger("mlwatchd.runtime")

#: How often lag and detector gauges are refreshed.
_GAUGE_EVERY_S: Final = 10.0
#: gen0 collection threshold after start-up (CPython's default is 700).
_GC_GEN0: Final = 50_000


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
                                             on_error=DetectorErrors(self.metrics),
                                             repartitioned=settings.state.repartitioned,
                                             max_state_bytes=_budget_bytes(settings))
        self.alerter = alerter
        self.health = Health(settings.observability.stall_after_s)
        self.stopping = stopping or threading.Event()
        self.status: StatusServer | None = None
        self.interactions: StatusServer | None = None
        self.processed = 0
        self._gauges_at = 0.0
        self._consumer: Consumer | None = None
        #: Input partitions paused for model-stage backpressure (:mod:`daemon.align`).
        self._held_back: set[TopicPartition] = set()
        #: True while this process's model stage is behind its forwarders.
        self._behind = False
        backoff = settings.kafka.reconnect_backoff_max_s
        #: The repartition topic, when model-scoped detectors consume it.
        rtopic = (settings.topics.repartition
                  if self.pipeline.repartitioned and self.pipeline.has_model_scope() else None)
        self.intake = Intake(
            settings.input_formats(), dlq_topic=settings.topics.dlq, metrics=self.metrics,
            max_bytes=settings.kafka.max_message_bytes,
            max_future_skew_s=settings.input.max_future_skew_s,
            max_age_s=settings.input.max_age_s, repartition_topic=rtopic,
            join_groups=settings.input_join_groups())
        self.model_stage = (ModelStage(rtopic, self.pipeline.model_scope_wants, self.metrics)
                            if rtopic is not None else None)
        # Event-time alignment of the model stage: its held events are
        # checkpointed state, so only with a store (none: unaligned).
        state = settings.state
        self.align = (ModelStageAlignment(state.model_stage_max_wait_s,
                                          state.model_stage_max_buffered, self.metrics.registry)
                      if rtopic is not None and (state.store == "kafka" or state.dir) else None)
        self.delivery = RecordDelivery(lambda: new_producer(settings.kafka), metrics=self.metrics,
                                       health=self.health, stopping=self.stopping,
                                       backoff_max_s=backoff)
        self.handoff = (FindingHandoff(alerter, health=self.health, stopping=self.stopping,
                                       backoff_max_s=backoff) if alerter is not None else None)
        self.checkpoints = Checkpoints(self.pipeline, self.intake, self.model_stage,
                                       align=self.align, metrics=self.metrics)
        key = settings.state.signing_key
        secret = key.get_secret_value().encode() if key is not None else None
        if settings.state.store == "local" and settings.state.dir:
            self.checkpoints.store = LocalStateStore(settings.state.dir, settings.kafka.group_id,
                                                     secret, on_reject=self._rejected)
        #: The context table on ``topics.context`` (pipeline runs), when a detector uses it.
        self.context: KafkaContextTable | None = None
        if self.pipeline.uses_context():
            self.context = KafkaContextTable(settings.kafka, settings.topics.context, secret,
                                             on_reject=self._rejected)
            self.pipeline.use_context(self.context)
        #: Learn-only reading of retained history on a first start (None: off).
        self.bootstrap = (Bootstrap(settings.bootstrap.history_s, self.metrics.registry)
                          if settings.bootstrap.history_s > 0 else None)
        self.offsets = Offsets(self.metrics)
        self.ownership = Ownership(self.checkpoints, self.offsets, self.metrics,
                                   inputs=self.intake.inputs, bootstrap=self.bootstrap)
        self.commit = BatchCommit(settings.topics, settings.state, self.metrics,
                                  delivery=self.delivery, handoff=self.handoff,
                                  context=self.context, checkpoints=self.checkpoints,
                                  ownership=self.ownership, offsets=self.offsets)

    # -- lifecycle ----------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to finish its batch, commit and exit (signal-safe)."""
        self.stopping.set()

    def run(self) -> int:
        """Consume until stopped. Returns the process exit code."""
        self.status, self.interactions = status_servers(self.settings, self.metrics,
                                                        self.health, self.alerter)
        for server in (self.status, self.interactions):
            if server is not None:
                server.start()
        if self.alerter is not None:
            self.alerter.start()
        log.info("daemon_starting", bootstrap=self.settings.kafka.bootstrap_servers,
                 group=self.settings.kafka.group_id, topics=sorted(self.intake.inputs),
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
        self.health.reason = "connecting to Kafka"
        if not self.delivery.connect():
            return False
        retried = Retrier(self.stopping, kafka.reconnect_backoff_max_s, self.metrics)
        self._consumer = retried(lambda: new_consumer(kafka), "consumer")
        if self._consumer is None:
            return False
        self.offsets.consumer = self.ownership.consumer = self._consumer
        opened, store = open_internal(
            self.settings, self._consumer, retried, inputs=self.intake.inputs,
            repartition_topic=self.intake.repartition_topic, context=self.context,
            on_reject=self._rejected)
        if store is not None:
            self.checkpoints.store = store
        if not opened:
            return False
        rtopic = self.intake.repartition_topic
        topics = sorted(self.intake.inputs) + ([rtopic] if rtopic else [])
        self._consumer.subscribe(topics=topics, listener=RebalanceListener(self.ownership))
        return True

    def _shutdown(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None:
                self.ownership.save(self.ownership.restored)
                self.offsets.commit()
                self.ownership.restored.clear()  # close() may revoke: nothing left to save
                consumer.close(autocommit=False)
        except Exception as exc:
            log.warning("consumer_close_failed", error=str(exc))
        self.delivery.close()
        if self.checkpoints.store is not None:
            self.checkpoints.store.close()
        if self.context is not None:
            self.context.stop()
        if self.alerter is not None:
            undelivered = self.alerter.stop(timeout=10.0)
            if undelivered:
                log.error("alerts_undelivered_at_exit", count=undelivered)
        for server in (self.status, self.interactions):
            if server is not None:
                server.stop()
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
            self.ownership.catch_up()
            if batch or (self.align is not None and self.align.holding()):
                self._process(batch)
            if self.align is not None:
                self._backpressure()
            now = time.monotonic()
            if now - self._gauges_at >= _GAUGE_EVERY_S:
                self._gauges_at = now
                self.update_gauges()

    def _backpressure(self) -> None:
        """Pause the input partitions the model stage holds events of while it waits
        for another source, resume them once it has caught up (:mod:`daemon.align`).

        Instead of releasing unaligned when the buffer is full during a catch-up:
        the sources that are behind in event time get read, the ones ahead wait.
        Partitions the rebalance keeps paused (state being restored) are left alone.
        """
        assert self.align is not None and self._consumer is not None
        consumer = self._consumer
        owned = consumer.assignment()
        restoring = {tp for tps in self.ownership.to_restore.values() for tp in tps}
        ahead = {TopicPartition(topic, number) for topic, number in
                 self.align.ahead(time.monotonic(), self.ownership.restored)}
        # The copies forwarded but not read back yet count too: a forwarder reads
        # its input faster than the model stage reads the copies, so the aligner
        # learns who is ahead late. While this process's model stage is behind by
        # more than a quarter of the buffer, its forwarders wait for it.
        rtopic = self.intake.repartition_topic
        positions = self.ownership.positions
        lag = 0
        for tp in owned:
            if tp.topic == rtopic and tp in positions:
                high = consumer.highwater(tp)
                lag += max(0, (high or 0) - positions[tp])
        cap = self.align.max_buffered
        if cap and lag > cap // 4:
            self._behind = True
        elif lag <= cap // 8:
            self._behind = False
        if self._behind:
            ahead |= {tp for tp in owned if tp.topic in self.intake.inputs
                      and self.model_stage is not None}
        wanted = (ahead & owned) - restoring
        done = (self._held_back - wanted) & owned - restoring
        try:
            if done:
                self._consumer.resume(*sorted(done))
                _unpark(self._consumer, done)
            new = wanted - self._held_back
            if wanted:  # again every round: a rebalance forgets pauses
                self._consumer.pause(*sorted(wanted))
        except (KafkaError, KeyError, ValueError) as exc:  # revoked in between
            log.warning("backpressure_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if new:
            self.align.pauses.inc(len(new))
            log.info("model_stage_backpressure", paused=[f"{t.topic}:{t.partition}"
                                                         for t in sorted(new)])
        self._held_back = wanted
        self.align.held_back(((tp.topic, tp.partition) for tp in wanted), time.monotonic())
        self.align.paused.set(len(wanted))

    def update_gauges(self) -> None:
        """Refresh consumer lag (once connected), detector state gauges and format counters."""
        _update_gauges(self._consumer, self.pipeline, self.intake, self.metrics)

    def _events(self, tp: TopicPartition, messages: Sequence[KafkaRecord], dead: list[OutRecord],
                forward: list[OutRecord]) -> Decoded | None:
        """The events of one partition's messages to judge (None: not a topic of ours)."""
        stage = self.model_stage
        if stage is not None and tp.topic == stage.topic:
            admitted = stage.admit(tp, messages, self.intake.decode(tp, messages, dead))
            if self.align is not None:  # held; released in event-time order after the batch
                self.align.push(state_partition_of(tp, stage.topic), admitted, time.monotonic())
                return []
            return admitted
        if tp.topic not in self.intake.inputs:
            return None
        events = self.intake.decode(tp, messages, dead)
        if stage is not None:
            forward.extend(stage.forward(messages, events,
                                         self.intake.format(tp).name == "contract"))
        if self.bootstrap is not None and self.bootstrap.learning:
            return _learn_history(self.bootstrap, self.pipeline, tp, messages, events)
        return events

    def _process(self, batch: Mapping[TopicPartition, Sequence[KafkaRecord]]) -> None:
        started = time.perf_counter()
        findings: list[Finding] = []
        dead: list[OutRecord] = []
        forward: list[OutRecord] = []
        count = 0
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, messages in batch.items():
            if not messages:
                continue
            events = self._events(tp, messages, dead, forward)
            if events is None:
                continue
            partition = state_partition_of(tp, self.intake.repartition_topic)
            for kind, run in _runs(events):
                findings.extend(self.pipeline.process_many(kind, partition, run))
            self.metrics.events.labels(tp.topic).inc(len(messages))
            count += len(messages)
            offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, None, -1)
        if self.align is not None:  # what is due, in one order whatever the arrivals
            for partition, released in self.align.release(time.monotonic(),
                                                          self.ownership.restored):
                for kind, run in _runs(released):
                    findings.extend(self.pipeline.process_many(kind, partition, run))
        if not self.commit(findings, dead, forward, offsets):
            return  # stopping while the broker or the outbox refuses: redelivered later
        self.processed += count
        if count:  # not the rounds that only release held events
            self.metrics.batch_events.observe(count)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    def _rejected(self, record: str, reason: str) -> None:
        """An internal record failed authentication or validation (stores call this)."""
        self.metrics.internal_rejected.labels(record, reason).inc()


def _unpark(consumer: Consumer, tps: set[TopicPartition]) -> None:
    """Drop what kafka-python parked for resumed partitions: they are fetched again.

    kafka-python (3.0.12) parks the records it had fetched for a partition
    paused before they were returned (KAFKA-7548), and puts them back only
    while no other partition's records are in line, which after the first
    fetch is never: the resumed partition is then never fetched again (it has
    parked data). Its position is that of the first record not returned, so
    dropping the parked data loses nothing. Other clients have no such parts.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    for name in ("_paused_partition_records", "_paused_completed_fetches"):
        parked = getattr(fetcher, name, None)
        if isinstance(parked, dict):
            for tp in tps:
                parked.pop(tp, None)


def _learn_history(bootstrap: Bootstrap, pipeline: Pipeline, tp: TopicPartition,
                   messages: Sequence[KafkaRecord], events: Decoded) -> Decoded:
    """Retained history on a first start: the detectors learn it, its findings are
    dropped (counted); the events to judge are returned."""
    history = bootstrap.split(tp, messages)
    if not history:
        return events
    cut = messages[history - 1].offset
    old = [e for e in events if e[1].offset <= cut]
    bootstrap.learnt.inc(len(old))
    for kind, run in _runs(old):
        bootstrap.suppressed.inc(len(pipeline.process_many(kind, tp.partition, run,
                                                           admit=False)))
    return events[len(old):]


def _budget_bytes(settings: Settings) -> int | None:
    """``state.max_state_mb`` in bytes (None: no budget)."""
    mb = settings.state.max_state_mb
    return None if mb is None else int(mb * 2**20)


def _update_gauges(consumer: Consumer | None, pipeline: Pipeline, intake: Intake,
                   metrics: Metrics) -> None:
    """Consumer lag, detector state gauges and format counters."""
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
                metrics.lag.labels(tp.topic, str(tp.partition)).set(high - position)
    totals: dict[tuple[str, str], float] = {}
    for _, detector in pipeline.detectors():
        for stat, value in detector.stats().items():
            key = (detector.name, stat)
            totals[key] = totals.get(key, 0.0) + value
    for (name, stat), value in totals.items():
        metrics.detector_gauge.labels(name, stat).set(value)
    metrics.count_evictions(pipeline.state_evictions())
    for (topic, name, stat), count in intake.stats().items():
        metrics.format_gauge.labels(topic, name, stat).set(count)


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


def _runs(events: list[tuple[Event, Source]]) -> Iterator[tuple[str, list[tuple[Event, Source]]]]:
    """Consecutive events of one kind, in order (a CloudTrail topic holds audit and access)."""
    run: list[tuple[Event, Source]] = []
    kind = ""
    last: type | None = None
    for pair in events:
        cls = type(pair[0])
        if cls is not last:  # the kind is looked up only where the event class changes
            last, this = cls, event_type_of(pair[0])
        if this != kind and run:
            yield kind, run
            run = []
        kind = this
        run.append(pair)
    if run:
        yield kind, run
