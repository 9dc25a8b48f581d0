"""What one state partition's state is made of, and its checkpoints.

A state partition's state is its detectors (with their open incidents), the
format state of its input topics (a KServe join), and, for a model
partition, what the model stage has already taken. :class:`Checkpoints`
saves all of it with the input offsets it reflects, restores it, and drops
it when the partition goes to another replica. Which detector state may be
restored is decided by the config fingerprint: after a config change that
detector relearns. The stores themselves are :mod:`daemon.state`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import structlog
from kafka import TopicPartition

from daemon.align import ModelStageAlignment
from daemon.intake import Intake
from daemon.metrics import Metrics
from daemon.model_stage import ModelStage, SeenSources
from daemon.state import Checkpoint, StateStore, snapshot_detectors, spec_fingerprint
from detectors.pipeline import GLOBAL, Pipeline, StatePartition

__all__ = ["Checkpoints", "state_partition_of"]

log = structlog.get_logger("mlwatchd.runtime")


def state_partition_of(tp: TopicPartition, repartition_topic: str | None) -> StatePartition:
    """Input partitions share their number; repartition partitions are model partitions."""
    if tp.topic == repartition_topic:
        return StatePartition.model(tp.partition)
    return StatePartition.input(tp.partition)


class Checkpoints:
    """Saves, restores and drops the state of state partitions.

    ``store`` may be None (no checkpoints: :meth:`save` does nothing, and
    :meth:`load` finds nothing) or set once the daemon has connected.
    """

    def __init__(self, pipeline: Pipeline, intake: Intake, model_stage: ModelStage | None,
                 store: StateStore | None = None, *, align: ModelStageAlignment | None = None,
                 metrics: Metrics | None = None) -> None:
        self.pipeline = pipeline
        self.intake = intake
        self.model_stage = model_stage
        #: The model stage's event-time aligner (its held events are state).
        self.align = align
        self.metrics = metrics
        self.store = store
        self.fingerprints = {s.name: spec_fingerprint(s) for s in pipeline.specs}
        #: State partitions with no checkpoint yet: saved before their first commit.
        self.unsaved: set[StatePartition] = set()
        #: When every restored partition was last saved (monotonic).
        self.saved_at = time.monotonic()

    def _topic(self, tp: TopicPartition) -> StatePartition:
        return state_partition_of(tp, self.intake.repartition_topic)

    def save(self, partitions: Iterable[StatePartition], positions: Mapping[TopicPartition, int],
             restored: set[StatePartition]) -> None:
        """Save the state of ``partitions`` and the model-scoped state, with offsets.

        ``positions``: next offset to process per topic-partition (what the
        state reflects); ``restored``: every partition this process holds.
        """
        if self.store is None:
            return
        partitions = list(partitions)
        started = time.perf_counter()
        size = 0
        positions = dict(positions)
        try:
            for p in partitions:
                if p == GLOBAL:
                    continue
                offsets = {tp.topic: off for tp, off in positions.items() if self._topic(tp) == p}
                seen = self.model_stage.snapshot(p) if self.model_stage is not None \
                    else SeenSources()
                size += self.store.save(Checkpoint(
                    p.code, offsets, snapshot_detectors(self.pipeline, p, self.fingerprints),
                    sources=seen.offsets, source_items=seen.items,
                    formats=self.intake.snapshot(p.index) if p.kind == "input" else {},
                    aligned=self.align.snapshot(p) if self.align is not None and p.is_model
                    else {}))
            if not self.pipeline.repartitioned:
                size += self.store.save(Checkpoint(
                    GLOBAL.code,
                    {f"{tp.topic}:{tp.partition}": off for tp, off in positions.items()},
                    snapshot_detectors(self.pipeline, GLOBAL, self.fingerprints)))
        except OSError as exc:
            log.error("checkpoint_failed", error=str(exc))
            return
        self.unsaved.difference_update(partitions)
        if set(partitions) >= restored - {GLOBAL}:
            self.saved_at = time.monotonic()
        log.debug("checkpoint_saved", partitions=[p.code for p in partitions], bytes=size,
                  seconds=round(time.perf_counter() - started, 3))

    def load(self, partition: StatePartition) -> Checkpoint | None:
        """Restore ``partition``'s last checkpoint into its parts; None if there is none
        (or it cannot be read: logged, and the partition starts afresh)."""
        if self.store is None:
            return None
        try:
            checkpoint = self.store.load(partition.code)
        except ValueError as exc:
            log.error("checkpoint_unreadable", partition=partition.code, error=str(exc))
            if self.metrics is not None:
                self.metrics.state_restore_failed.labels("*", "checkpoint").inc()
            return None
        if checkpoint is None:
            return None
        usable = {name: state for name, (fp, state) in checkpoint.detectors.items()
                  if fp == self.fingerprints.get(name)}
        stale = sorted(set(checkpoint.detectors) - set(usable))
        if stale:
            log.warning("checkpoint_config_changed", partition=partition.code, relearning=stale)
        for name, reason in self.pipeline.restore(partition, usable):
            log.error("detector_state_unreadable", partition=partition.code, detector=name,
                      reason=reason, action="relearning")
            if self.metrics is not None:
                self.metrics.state_restore_failed.labels(name, reason).inc()
        if partition.is_model and self.model_stage is not None:
            self.model_stage.restore(partition, SeenSources(
                dict(checkpoint.sources), dict(checkpoint.source_items)))
        if partition.is_model and self.align is not None:
            try:  # the held events continue from the checkpoint
                self.align.restore(partition, checkpoint.aligned, time.monotonic())
            except ValueError as exc:
                log.error("alignment_state_unreadable", partition=partition.code,
                          error=str(exc))
        if partition.kind == "input":
            self.intake.restore(partition.index, checkpoint.formats)
        return checkpoint

    def drop(self, partition: StatePartition) -> None:
        """Forget ``partition``'s state (it went to another replica)."""
        self.pipeline.drop(partition)
        if partition.kind == "input":
            self.intake.drop(partition.index)
        if self.model_stage is not None:
            self.model_stage.drop(partition)
        if self.align is not None:
            self.align.drop(partition)
        self.unsaved.discard(partition)
