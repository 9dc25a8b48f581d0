"""The context table on Kafka: a compacted topic every replica reads whole.

In the style of a Kafka Streams GlobalKTable. Detectors publish cross-actor
facts (pipeline runs: who started run X, when it ended) through
:class:`KafkaContextTable.put_run`; the record goes to the local view at once
and to ``topics.context`` keyed ``run:<run_id>``, so compaction keeps each
run's latest record. Every replica reads every partition of the topic, with
no consumer group, from the beginning and then as it grows, into its local
:class:`~detectors.context.InMemoryContextTable`; :meth:`start` reads up to
the end offsets before returning, so a restarted replica judges with the
table it had.

Records are signed like the other internal records (HMAC-SHA256 under
``state.signing_key``, bound to the topic and the record key; see
``daemon/integrity.py``). With a key, a record that is unsigned or whose MAC
fails is ignored and counted (``mlwatchd_internal_records_rejected_total
{record="context"}``): whoever can write the input topics or the context
topic cannot whitelist a run. Without a key records are taken as they come
(the daemon logs that at start).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

import orjson
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from daemon.integrity import MAC_HEADER, RejectHook, header, record_mac, verify_mac
from daemon.kafka_io import client_config, new_producer
from daemon.sections_kafka import KafkaSettings
from detectors.context import InMemoryContextTable, PipelineRun, run_from_dict, run_to_dict

__all__ = ["KafkaContextTable", "context_mac_context"]

log = structlog.get_logger("mlwatchd.context")

#: Largest context record read (a run record is a few hundred bytes).
_MAX_RECORD_BYTES: Final = 16_384


def context_mac_context(topic: str, key: str) -> list[str]:
    """What a context record's MAC is bound to: its topic and its record key."""
    return ["context", topic, key]


class KafkaContextTable:
    """A :class:`~detectors.context.ContextTable` kept on a compacted topic."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        key: bytes | None,
        on_reject: RejectHook | None = None,
        local: InMemoryContextTable | None = None,
        catch_up_timeout_s: float = 30.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self._key = key
        self._on_reject = on_reject
        self.local = local if local is not None else InMemoryContextTable()
        self.catch_up_timeout_s = catch_up_timeout_s
        self.rejected = 0
        self.published = 0
        self._producer: KafkaProducer | None = None
        self._consumer: KafkaConsumer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._unflushed = False

    @property
    def signed(self) -> bool:
        return self._key is not None

    # -- the ContextTable protocol ------------------------------------------

    def get_run(self, run_id: str) -> PipelineRun | None:
        return self.local.get_run(run_id)

    def high_water(self) -> float:
        return self.local.high_water()

    def put_run(self, run: PipelineRun) -> None:
        self.local.put_run(run)
        merged = self.local.get_run(run.run_id)
        if merged is None or self._producer is None:
            return
        key = f"run:{merged.run_id}"
        body = orjson.dumps(run_to_dict(merged))
        headers = ([(MAC_HEADER, record_mac(self._key, context_mac_context(self.topic, key),
                                            body).encode())]
                   if self._key is not None else [])
        future = self._producer.send(self.topic, key=key.encode(), value=body, headers=headers)
        future.add_errback(self._send_failed)
        self.published += 1
        self._unflushed = True

    def flush(self, timeout_s: float) -> None:
        """Wait until the records published so far are acknowledged (the daemon calls
        this before it commits the batch that published them); failures are logged."""
        if self._producer is None or not self._unflushed:
            return
        try:
            self._producer.flush(timeout=timeout_s)
            self._unflushed = False
        except Exception as exc:
            log.warning("context_flush_failed", error=f"{type(exc).__name__}: {exc}")

    def _send_failed(self, exc: Exception) -> None:
        log.warning("context_publish_failed", error=f"{type(exc).__name__}: {exc}")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> KafkaContextTable:
        """Connect, read the topic up to its end (bounded wait), then keep reading.

        Raises if the topic has no partitions yet (just created: the caller
        retries), leaving nothing open.
        """
        consumer = KafkaConsumer(
            **client_config(self.kafka),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.kafka.fetch_max_wait_ms,
            max_partition_fetch_bytes=self.kafka.max_partition_fetch_bytes,
            bootstrap_timeout_ms=5_000,
        )
        try:
            found = consumer.partitions_for_topic(self.topic)
            if not found:
                raise RuntimeError(f"context topic {self.topic} has no partitions (yet)")
            partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
        except Exception:
            consumer.close(autocommit=False)
            raise
        self._consumer = consumer
        deadline = time.monotonic() + self.catch_up_timeout_s
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                log.warning("context_catch_up_incomplete", topic=self.topic)
                break
            self._poll_once(200)
        self._producer = new_producer(self.kafka)
        log.info("context_loaded", topic=self.topic, partitions=len(partitions),
                 runs=len(self.local), rejected=self.rejected)
        self._thread = threading.Thread(target=self._run, name="mlwatchd-context", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._producer is not None:
            try:
                self._producer.flush(timeout=10)
                self._producer.close(timeout=10)
            except Exception as exc:
                log.warning("context_producer_close_failed", error=str(exc))
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("context_consumer_close_failed", error=str(exc))

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll_once(500)
            except Exception as exc:  # keep reading: the table must not go stale silently
                log.warning("context_poll_failed", error=f"{type(exc).__name__}: {exc}")
                self._stopping.wait(1.0)

    def _poll_once(self, timeout_ms: int) -> None:
        assert self._consumer is not None
        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        for messages in batch.values():
            for message in messages:
                self.apply(message.key, message.value, message.headers)

    # -- records ------------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None, headers: Any) -> bool:
        """Verify, parse and merge one record of the topic; False if refused."""
        if key is None or value is None:  # a tombstone or a stray record: nothing to learn
            return False
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse("bad_key")
        if len(value) > _MAX_RECORD_BYTES:
            return self._refuse("too_large")
        if self._key is not None:
            tag = header(headers, MAC_HEADER)
            if tag is None:
                return self._refuse("unsigned")
            if not verify_mac(self._key, context_mac_context(self.topic, key_text), value, tag):
                return self._refuse("bad_mac")
        try:
            run = run_from_dict(orjson.loads(value))
        except (ValueError, orjson.JSONDecodeError):
            return self._refuse("malformed")
        if key_text != f"run:{run.run_id}":
            return self._refuse("key_mismatch")
        self.local.put_run(run)
        return True

    def _refuse(self, reason: str) -> bool:
        self.rejected += 1
        if self._on_reject is not None:
            self._on_reject("context", reason)
        return False
