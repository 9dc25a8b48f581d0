"""Delivery of a batch's output: records acknowledged by Kafka, findings recorded by the outbox.

Both hold the batch until done: a record the broker does not acknowledge is
sent again with a growing backoff (and, after a few seconds of failures, by a
fresh producer: an idempotent producer does not recover from a broker that
lost its state); a record the producer or broker refuses for good (too large,
invalid) is not retried, it is counted and logged (``send_all`` sends a
cut-down dead letter instead when it can). While either waits, /readyz says
why; a stop request ends the wait, and the batch is then not committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import structlog
from kafka.errors import KafkaError

from daemon.kafka_io import OutRecord, ProduceFailed, Producer, Refusal, connect, send_all
from daemon.metrics import Health, Metrics
from detectors.findings import Finding
from playbooks.outbox import OutboxUnavailable
from playbooks.protocol import ResponseSide

__all__ = ["ACK_TIMEOUT_S", "FindingHandoff", "RecordDelivery"]

log = structlog.get_logger("mlwatchd.runtime")

#: How long one produce attempt may wait for acknowledgements.
ACK_TIMEOUT_S: Final = 30.0
#: First retry delay; it doubles up to the reconnect backoff.
_FIRST_DELAY_S: Final = 0.5
#: From this delay on, a failed produce gets a fresh producer.
_RECREATE_AFTER_S: Final = 4.0


class RecordDelivery:
    """Owns the producer; :meth:`deliver` returns once every record is acknowledged.

    ``new_producer`` makes a producer (it may raise while the cluster is
    unreachable; :func:`~daemon.kafka_io.connect` retries it).
    """

    def __init__(self, new_producer: Callable[[], Producer], *, metrics: Metrics, health: Health,
                 stopping: threading.Event, backoff_max_s: float) -> None:
        self._new_producer = new_producer
        self.metrics = metrics
        self.health = health
        self.stopping = stopping
        self.backoff_max_s = backoff_max_s
        self.producer: Producer | None = None

    def connect(self) -> bool:
        """Make the producer; False if asked to stop first."""
        self.producer = connect(self._new_producer, "producer", self.stopping,
                                self.backoff_max_s, self.metrics.broker_reconnects.inc)
        return self.producer is not None

    def deliver(self, records: list[OutRecord]) -> bool:
        """Send until every record is acknowledged; False if asked to stop first."""
        delay = _FIRST_DELAY_S
        pending = records
        while True:
            assert self.producer is not None
            try:
                self._report_refused(send_all(self.producer, pending, ACK_TIMEOUT_S))
                if delay > _FIRST_DELAY_S:
                    self.health.ready, self.health.reason = True, "consuming"
                    log.info("produce_recovered")
                return True
            except ProduceFailed as exc:
                self._report_refused(exc.refused)
                pending = exc.failed
                error: BaseException = exc.error
            except KafkaError as exc:
                error = exc
            self.metrics.produce_retries.inc()
            self.health.ready, self.health.reason = False, "cannot write findings to Kafka"
            log.warning("produce_failed", records=len(pending), retry_in_s=round(delay, 1),
                        error=f"{type(error).__name__}: {error}")
            if self.stopping.wait(delay):
                return False
            self.health.beat()
            delay = min(delay * 2, self.backoff_max_s)
            if delay >= _RECREATE_AFTER_S:
                self.producer.close(timeout=1)
                if not self.connect():
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

    def close(self) -> None:
        if self.producer is None:
            return
        try:
            self.producer.flush(timeout=10)
            self.producer.close(timeout=10)
        except Exception as exc:
            log.warning("producer_close_failed", error=str(exc))


class FindingHandoff:
    """Hands each finding to the response side's outbox before the batch is committed."""

    def __init__(self, response: ResponseSide, *, health: Health, stopping: threading.Event,
                 backoff_max_s: float) -> None:
        self.response = response
        self.health = health
        self.stopping = stopping
        self.backoff_max_s = backoff_max_s

    def submit(self, findings: list[Finding]) -> bool:
        """Hand every finding to the response engine; False if asked to stop first.

        An outbox that cannot record one (locked by another process, disk
        full) raises ``OutboxUnavailable``: the batch is not committed, and
        that finding and the rest are submitted again after a backoff.
        """
        delay, done = _FIRST_DELAY_S, 0
        while done < len(findings):
            try:
                self.response.submit(findings[done])
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
            delay = min(delay * 2, self.backoff_max_s)
        if delay > _FIRST_DELAY_S:
            self.health.ready, self.health.reason = True, "consuming"
            log.info("submit_recovered")
        return True
