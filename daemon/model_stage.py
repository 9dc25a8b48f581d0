"""The model stage: inference events forwarded by model, and each copy taken once.

With ``state.model_routing: repartition`` each valid inference event that a
model-scoped detector wants is also forwarded, unchanged, to the internal
repartition topic keyed by its ``model_id`` (:meth:`ModelStage.forward`), in
the same acknowledged batch as the findings. The same consumer group reads
that topic, and the model-scoped detectors run on it, one set per
repartition partition (``StatePartition.model(r)``).

A forwarder that crashes before its commit forwards some events again; each
copy names its source partition and offset (and item) in
:data:`SOURCE_HEADER`, and :meth:`ModelStage.admit` skips what the stage has
already seen. The high-water positions are part of each model partition's
checkpoint (:meth:`snapshot` / :meth:`restore`).

``admit`` is the one hand-off from the repartition topic to the model-scoped
detectors: events in, the events to judge (with their original sources) out.
Anything that must see the model stream in order (e.g. an event-time
aligner) goes right after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
from kafka import TopicPartition

from daemon.intake import Decoded, KafkaRecord
from daemon.kafka_io import OutRecord
from daemon.metrics import Metrics
from detectors.events import Event, InferenceEvent
from detectors.findings import Source
from detectors.pipeline import StatePartition

__all__ = ["SOURCE_HEADER", "ModelStage", "SeenSources", "origins"]

#: Header on repartitioned copies: "topic:partition:offset" of the original,
#: plus "#item" when the event is one of several in its message.
SOURCE_HEADER: Final = "mlwatchd.source"

#: Repartition offset -> ("topic:partition", offset, item) of the original event.
Origins = dict[int, tuple[str, int, int | None]]


def origins(messages: Sequence[KafkaRecord]) -> Origins:
    """Repartition offset -> ("topic:partition", offset, item) of the original event."""
    out: Origins = {}
    for message in messages:
        for name, value in message.headers or ():
            if name == SOURCE_HEADER:
                text, _, item = value.decode("ascii", "replace").partition("#")
                key, _, offset = text.rpartition(":")
                if key and offset.isdigit() and (not item or item.isdigit()):
                    out[message.offset] = (key, int(offset), int(item) if item else None)
    return out


@dataclass
class SeenSources:
    """What one model partition has taken: per source "topic:partition", the last
    offset, and the item index of that copy when it was one event of several."""

    offsets: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)


class ModelStage:
    """Forwards inference events by model; admits each repartitioned copy once.

    ``topic``: the repartition topic. ``wants``: True if some model-scoped
    detector takes this ``model_id``'s events (others are not forwarded).
    """

    def __init__(self, topic: str, wants: Callable[[str], bool], metrics: Metrics) -> None:
        self.topic = topic
        self.wants = wants
        self.metrics = metrics
        self._seen: dict[StatePartition, SeenSources] = {}

    def forward(self, messages: Sequence[KafkaRecord], events: Decoded,
                contract: bool) -> list[OutRecord]:
        """Copies of ``events`` (decoded from ``messages``) for the repartition topic.

        Contract events go on unchanged; others as the contract event read.
        An event's own copy of :data:`SOURCE_HEADER` is dropped: a producer
        must not be able to make the model stage skip events.
        """
        out: list[OutRecord] = []
        by_offset: dict[int, KafkaRecord] | None = None
        for event, source in events:
            if not isinstance(event, InferenceEvent) or not self.wants(event.model_id):
                continue
            if by_offset is None:
                by_offset = {m.offset: m for m in messages}
            message = by_offset[source.offset]
            origin = f"{source.topic}:{source.partition}:{source.offset}" + (
                f"#{source.item}" if source.item is not None else "")
            headers = [h for h in message.headers or () if h[0] != SOURCE_HEADER]
            copy = message.value if contract else msgspec.json.encode(event)
            out.append((self.topic, event.model_id.encode(), copy,
                        [*headers, (SOURCE_HEADER, origin.encode())]))
        return out

    def admit(self, tp: TopicPartition, messages: Sequence[KafkaRecord],
              events: Decoded) -> Decoded:
        """The repartitioned ``events`` not seen yet, each with its original source."""
        return list(self._unseen(StatePartition.model(tp.partition), origins(messages), events))

    def _unseen(self, partition: StatePartition, found: Origins,
                events: Decoded) -> Iterator[tuple[Event, Source]]:
        """Copies from one source partition arrive in (offset, item) order (one
        idempotent producer per batch), except that a forwarder which crashed
        before committing forwards a stretch again: anything at or below the
        source's high-water position is such a copy."""
        seen = self._seen.setdefault(partition, SeenSources())
        for event, source in events:
            origin = found.get(source.offset)
            if origin is None:
                yield event, source
                continue
            key, offset, item = origin
            last = seen.offsets.get(key, -1)
            if offset < last or (offset == last and (
                    item is None or key not in seen.items or item <= seen.items[key])):
                self.metrics.repartition_duplicates.inc()
                continue
            seen.offsets[key] = offset
            if item is None:
                seen.items.pop(key, None)
            else:
                seen.items[key] = item
            topic, _, number = key.rpartition(":")
            yield event, Source(topic, int(number), offset, item)

    # -- checkpointed state ----------------------------------------------------

    def snapshot(self, partition: StatePartition) -> SeenSources:
        """A copy of what ``partition`` has seen (empty if nothing)."""
        seen = self._seen.get(partition, SeenSources())
        return SeenSources(dict(seen.offsets), dict(seen.items))

    def restore(self, partition: StatePartition, seen: SeenSources) -> None:
        self._seen[partition] = SeenSources(dict(seen.offsets), dict(seen.items))

    def drop(self, partition: StatePartition) -> None:
        self._seen.pop(partition, None)
