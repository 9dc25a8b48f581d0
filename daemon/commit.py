"""The end of a batch: its output out and acknowledged, then its offsets committed.

Order matters for at-least-once delivery without loss: findings (and their
OCSF copies), dead letters and forwarded events are produced and acknowledged
first; then the context table's runs are flushed; then the response outbox
records the findings durably; then state is checkpointed with the offsets it
reflects; only then are the offsets committed. A stop request while the broker
or the outbox refuses ends the batch uncommitted (it is redelivered later).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import structlog
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from daemon.checkpoints import Checkpoints
from daemon.context import KafkaContextTable
from daemon.delivery import ACK_TIMEOUT_S, FindingHandoff, RecordDelivery
from daemon.kafka_io import OutRecord
from daemon.metrics import Metrics
from daemon.rebalance import Offsets, Ownership
from daemon.sections import StateSettings
from daemon.sections_kafka import TopicSettings
from detectors.findings import Finding, encode_finding
from playbooks.ocsf import ocsf_records

__all__ = ["BatchCommit"]

log = structlog.get_logger("mlwatchd.runtime")


class BatchCommit:
    """Delivers a judged batch's output and commits its offsets (see the module doc)."""

    def __init__(self, topics: TopicSettings, state: StateSettings, metrics: Metrics, *,
                 delivery: RecordDelivery, handoff: FindingHandoff | None,
                 context: KafkaContextTable | None, checkpoints: Checkpoints,
                 ownership: Ownership, offsets: Offsets) -> None:
        self.topics = topics
        self.checkpoint_every_s = state.checkpoint_every_s
        self.metrics = metrics
        self.delivery = delivery
        self.handoff = handoff
        self.context = context
        self.checkpoints = checkpoints
        self.ownership = ownership
        self.offsets = offsets

    def __call__(self, findings: list[Finding], dead: list[OutRecord],
                 forward: list[OutRecord],
                 offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> bool:
        """Deliver, hand off, checkpoint, commit; False: stopped first, nothing committed."""
        records: list[OutRecord] = [
            (self.topics.findings, f.entity.id.encode(), encode_finding(f), None)
            for f in findings
        ]
        records.extend(ocsf_records(findings, self.topics.ocsf))
        records.extend(dead)
        if forward:
            records.extend(forward)
            self.metrics.repartitioned.inc(len(forward))
        if records and not self.delivery.deliver(records):
            return False  # stopping while the broker refuses: redelivered later
        if self.context is not None:  # the runs this batch published, before its commit
            self.context.flush(ACK_TIMEOUT_S)
        for finding in findings:
            self.metrics.findings.labels(finding.detector, finding.severity).inc()
            log.info("finding", finding_id=finding.finding_id, detector=finding.detector,
                     kind=finding.kind, severity=finding.severity,
                     entity_type=finding.entity.type, model_id=finding.model_id)
        # Before the commit: the response outbox records them durably (and
        # ignores a redelivered finding), so a crash in between loses nothing.
        if findings and self.handoff is not None and not self.handoff.submit(findings):
            return False  # stopping while the outbox refuses: redelivered later
        ownership = self.ownership
        ownership.positions.update((tp, meta.offset) for tp, meta in offsets.items())
        if self.checkpoints.store is not None:
            # State and the offsets it reflects are saved *before* the commit: a
            # restore seeks to the checkpoint's offsets, so it is consistent
            # whether the crash came before or after the commit. A partition
            # with no checkpoint at all is saved before its first commit.
            if time.monotonic() - self.checkpoints.saved_at >= self.checkpoint_every_s:
                ownership.save(ownership.restored)
            elif self.checkpoints.unsaved:
                ownership.save(self.checkpoints.unsaved)
        self.offsets.pending.update((tp, self.offsets.not_back(tp, meta))
                                    for tp, meta in offsets.items())
        self.offsets.commit()
        return True
