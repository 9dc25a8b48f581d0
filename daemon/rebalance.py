"""Which state partitions this replica holds, through rebalances; and the offsets it commits.

The group protocol's callbacks only record what changed (:meth:`Ownership.on_revoked`,
:meth:`Ownership.on_assigned`): restoring or saving a large checkpoint inside
them delays the rejoin, and with it the whole group (a soak with 35 MB
partitions livelocked this way). A revoked partition's state is *parked*: if
the next assignment gives it back it simply continues; otherwise it is
dropped, and the new owner restores the last checkpoint and replays from its
offsets. A gained partition is paused until the loop has restored its state
(:meth:`Ownership.restore_gained`), then resumed at the checkpoint's offsets.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import structlog
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from daemon.bootstrap import Bootstrap
from daemon.checkpoints import Checkpoints, state_partition_of
from daemon.kafka_io import Consumer
from daemon.metrics import Metrics
from detectors.pipeline import GLOBAL, StatePartition

__all__ = ["Offsets", "Ownership", "RebalanceListener"]

log = structlog.get_logger("mlwatchd.runtime")


class Offsets:
    """Next offsets to commit, per topic-partition, for work already acknowledged."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.consumer: Consumer | None = None
        self.pending: dict[TopicPartition, OffsetAndMetadata] = {}
        #: Partitions restored from a checkpoint older than the group's commit:
        #: that commit, which their replay must not move back (a stop mid-replay
        #: would leave the group's offsets lower than they were; the checkpoint
        #: says where the replay is).
        self.floor: dict[TopicPartition, int] = {}

    def not_back(self, tp: TopicPartition, meta: OffsetAndMetadata) -> OffsetAndMetadata:
        """The offset to commit: the group's commit while a replay is still below it
        (the state's own position, in the checkpoint, stays the replay's)."""
        floor = self.floor.get(tp)
        if floor is None:
            return meta
        if meta.offset >= floor:
            del self.floor[tp]
            return meta
        return OffsetAndMetadata(floor, None, -1)

    def commit(self) -> bool:
        """Commit acknowledged work; True when everything processed is committed."""
        if not self.pending or self.consumer is None:
            return True
        offsets, self.pending = self.pending, {}
        try:
            self.consumer.commit(offsets=offsets)
            self.metrics.commits.labels("ok").inc()
            return True
        except CommitFailedError as exc:
            # The group rebalanced: the new owner resumes from the last commit.
            self.metrics.commits.labels("failed").inc()
            log.warning("commit_failed_rebalanced", partitions=len(offsets), error=str(exc))
        except KafkaError as exc:
            self.metrics.commits.labels("failed").inc()
            self.pending = {**offsets, **self.pending}
            log.warning("commit_failed", partitions=len(offsets), error=str(exc))
        return False


class Ownership:
    """The rebalance state machine: held, parked and to-be-restored state partitions.

    ``inputs``: the input topics (bootstrap reads their history, not the
    repartition topic's). ``consumer`` is set once connected.
    """

    def __init__(self, checkpoints: Checkpoints, offsets: Offsets, metrics: Metrics, *,
                 inputs: Collection[str], bootstrap: Bootstrap | None = None) -> None:
        self.checkpoints = checkpoints
        self.offsets = offsets
        self.metrics = metrics
        self.inputs = inputs
        self.bootstrap = bootstrap
        self.consumer: Consumer | None = None
        #: Next offset to process per topic-partition (what the state reflects).
        self.positions: dict[TopicPartition, int] = {}
        #: State partitions this process holds, state restored.
        self.restored: set[StatePartition] = set()
        #: Revoked partitions whose state is kept until the next assignment: an
        #: eager rebalance revokes everything and usually gives most of it back.
        self.parked: dict[StatePartition, dict[TopicPartition, int]] = {}
        #: Gained partitions paused until the loop has restored their state.
        self.to_restore: dict[StatePartition, list[TopicPartition]] = {}
        #: Re-gained topic-partitions whose start offset is still to be recorded.
        self.to_record: list[TopicPartition] = []

    @property
    def _stored(self) -> bool:
        return self.checkpoints.store is not None

    def _partition(self, tp: TopicPartition) -> StatePartition:
        return state_partition_of(tp, self.checkpoints.intake.repartition_topic)

    def save(self, partitions: Collection[StatePartition]) -> None:
        """Checkpoint ``partitions`` (and the model-scoped state) at their positions."""
        self.checkpoints.save(sorted(partitions), self.positions, self.restored)

    def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        """Commit what is acknowledged and park the state; nothing slow in here."""
        self.offsets.commit()
        lost = {self._partition(tp) for tp in revoked}
        for partition in sorted(lost & self.restored):
            self.parked[partition] = {tp: off for tp, off in self.positions.items()
                                      if self._partition(tp) == partition}
            self.restored.discard(partition)
        for partition in lost:
            self.to_restore.pop(partition, None)
        for tp in revoked:
            self.positions.pop(tp, None)
            self.offsets.floor.pop(tp, None)
        gone = set(revoked)
        self.to_record = [tp for tp in self.to_record if tp not in gone]
        log.info("partitions_revoked", partitions=[f"{t.topic}:{t.partition}" for t in revoked])

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.metrics.assigned.set(len(assigned))
        log.info("partitions_assigned", partitions=[f"{t.topic}:{t.partition}" for t in assigned])
        assert self.consumer is not None
        by_partition: dict[StatePartition, list[TopicPartition]] = {}
        for tp in assigned:
            by_partition.setdefault(self._partition(tp), []).append(tp)
        parked, self.parked = self.parked, {}
        for partition, tps in sorted(by_partition.items()):
            if partition in self.restored:
                continue
            kept = parked.pop(partition, None)
            if kept is not None:
                # Ours again: the state in memory continues where it stopped.
                for tp in tps:
                    if tp in kept:
                        self.consumer.seek(tp, kept[tp])
                        self.positions[tp] = kept[tp]
                self.restored.add(partition)
                self.to_record.extend(tp for tp in tps if tp not in kept)
            elif self._stored or self.bootstrap is not None:
                self.consumer.pause(*tps)  # until the loop restored its state
                self.to_restore[partition] = tps
            else:
                self.restored.add(partition)
        for partition, gone in parked.items():  # went to another replica
            self.checkpoints.drop(partition)
            if self.bootstrap is not None:
                self.bootstrap.forget(list(gone))
        if self._stored and GLOBAL not in self.restored \
                and not self.checkpoints.pipeline.repartitioned:
            self.to_restore[GLOBAL] = []

    def restore_gained(self) -> None:
        """Restore the state of newly gained partitions, seek, and resume them."""
        assert self.consumer is not None
        todo, self.to_restore = self.to_restore, {}
        for partition, tps in sorted(todo.items()):
            checkpoint = self.checkpoints.load(partition)
            self.restored.add(partition)
            if partition == GLOBAL:
                continue
            if checkpoint is None:
                if self._stored:
                    self.checkpoints.unsaved.add(partition)
                if self.bootstrap is not None:
                    inputs = [tp for tp in tps if tp.topic in self.inputs]
                    self.bootstrap.start(self.consumer, inputs, self.committed(inputs))
            else:
                committed = self.committed(tps)
                for tp in tps:
                    offset = checkpoint.offsets.get(tp.topic)
                    if offset is None:
                        continue  # its state has not seen this topic: see record_start
                    # Resume where the state was saved: anything committed after
                    # it is processed again, so state == never stopped.
                    self.consumer.seek(tp, offset)
                    self.positions[tp] = offset
                    if committed.get(tp, -1) > offset:
                        self.offsets.floor[tp] = committed[tp]
                    if offset > committed.get(tp, -1):
                        # The last owner saved this far but could not commit:
                        # commit it now, or the lag stays even with nothing to read.
                        self.offsets.pending[tp] = OffsetAndMetadata(offset, None, -1)
                log.info("checkpoint_restored", partition=partition.code,
                         offsets=checkpoint.offsets, saved_at=checkpoint.saved_at)
            self.record_start(tps)
            self.consumer.resume(*tps)
        self.offsets.commit()

    def record_start(self, tps: list[TopicPartition]) -> None:
        """Record where the state starts on topics it has not consumed yet.

        A checkpoint must name an offset for *every* topic of its partition:
        one written after only the access events were processed, restored
        after the inference events were processed and committed, would
        otherwise resume inference at the commit and never feed those events
        to the state (the soak caught this as findings that differed from a
        clean run).
        """
        assert self.consumer is not None
        for tp in tps:
            if tp not in self.positions:
                try:
                    self.positions[tp] = self.consumer.position(tp)
                except KafkaError as exc:
                    log.warning("position_unknown", partition=str(tp), error=str(exc))

    def catch_up(self) -> None:
        """What the loop does between polls: restore gained partitions, record starts."""
        if self.to_restore:
            self.restore_gained()
        if self.to_record:
            todo, self.to_record = self.to_record, []
            self.record_start(todo)

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.consumer is not None
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            try:
                offset = self.consumer.committed(tp)
            except KafkaError as exc:
                log.warning("committed_offset_unknown", partition=str(tp), error=str(exc))
                continue
            if offset is not None:
                out[tp] = offset
        return out


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python's listener, handing both callbacks to :class:`Ownership`."""

    def __init__(self, ownership: Ownership) -> None:
        self.ownership = ownership

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.ownership.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self.ownership.on_assigned(list(assigned))
