"""Event-time alignment of the model stage (issue #15, item 3).

The model stage of a repartition partition receives a model's inference
events from several *sources* (the input partitions their forwarders read),
in the order the forwarders' batches land: a forwarder that was killed,
restarted or moved by a rebalance lands its batches later, so a run under
faults fed the model-scoped detectors (drift, confidence, performance,
integrity) another sequence than a clean run, and their windows, hence their
findings, differed.

:class:`EventTimeAligner` puts them back in one order that depends on the
data only, as Kafka Streams' timestamp synchronisation does: one FIFO per
source (a source's copies arrive in offset order), and the event released
next is always the smallest head over all sources by (event time, source
topic, source partition, offset, item). A head is only released while every
source has a buffered event to compare it with: that merge order is the
same whatever the batch splits and interleavings, so a replay, a catch-up
from a backlog and a run under faults give the same windows.

Bounds:

- **Wait** (``max_wait_s``, wall clock): a source that has sent nothing for
  ``max_wait_s`` is not waited for. Wall clock and not event time, because
  event time cannot tell a source that is late (a forwarder restarting) from
  one that has nothing to send: with an event-time bound, the last events
  before a quiet spell would wait for the next burst, and during a catch-up
  (event time racing ahead of wall time) a lagging source would be skipped
  at once. What the bound must protect is detection latency, which is wall
  time. It also covers sources not heard from yet: a new or restored aligner
  holds everything for ``max_wait_s`` (warm-up), so a source whose forwarder
  starts a little later is still merged in order.
- **Backpressure** (half of ``max_buffered``): when an aligner holds that
  many events, the sources it holds events of (``ahead``: they are why it is
  full) are named by :meth:`EventTimeAligner.pressure`, and the daemon pauses
  those it reads itself as input partitions (``consumer.pause``) until the
  aligner is down to a quarter of ``max_buffered``; a source some aligner
  waits for (``awaited``) is never paused. During a catch-up from a backlog
  the input partitions' event times drift apart (a partition with fewer
  events per hour runs ahead); pausing the ones ahead lets the others catch
  up instead of releasing unaligned. The wait for a silent source stays
  bounded by ``max_wait_s``. A forwarder in *another* process cannot be
  paused from here: its copies still count against the memory bound.
- **Memory** (``max_buffered`` events): over it, the oldest events (merge
  order) are released without waiting, counted in ``forced``.
- An event that arrives after the merge has moved past it (its source was
  not waited for, or the cap forced the others on) is released in turn and
  counted in ``late``: only then can the order differ from a clean run.

At-least-once: the buffer is part of the model partition's state.
:meth:`snapshot` goes into the partition's checkpoint, which is written
before the repartition offsets are committed and names the offsets the state
(buffer included) reflects; :meth:`restore` continues from it on a restart or
a handoff, so an event held here when the process dies is neither lost nor
released twice.

>>> from detectors.events import InferenceEvent
>>> from detectors.findings import Source
>>> def ev(ts: float) -> InferenceEvent:
...     return InferenceEvent(ts=ts, model_id="m", request_id=str(ts), principal="p",
...                           features=[1.0], prediction=1)
>>> a = EventTimeAligner(max_wait_s=5.0, max_buffered=100, now=0.0)
>>> a.push([(ev(3.0), Source("in", 0, 10)), (ev(4.0), Source("in", 0, 11))], now=6.0)
>>> a.push([(ev(1.0), Source("in", 1, 7))], now=6.0)
>>> [e.ts for e, _ in a.release(now=6.0)]  # partition 1 has nothing left to compare: wait
[1.0]
>>> [e.ts for e, _ in a.release(now=11.5)]  # partition 1 quiet for 5 s: not waited for
[3.0, 4.0]
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from detectors.events import Event, decode_any
from detectors.findings import Source
from detectors.pipeline import StatePartition

__all__ = ["EventTimeAligner", "ModelStageAlignment"]

#: Version of :meth:`EventTimeAligner.snapshot`'s layout.
_FORMAT: Final = 1

_Item = tuple[Event, Source]
#: Merge key: event time, source topic, source partition, offset, item (-1: none).
_Key = tuple[float, str, int, int, int]
_SourceId = tuple[str, int]


def _key(event: Event, source: Source) -> _Key:
    item = -1 if source.item is None else source.item
    return (float(event.ts), source.topic, source.partition, source.offset, item)


class EventTimeAligner:
    """Buffers a model partition's events per source and releases them in event-time order.

    ``now`` is a monotonic wall clock in seconds (the caller's; tests pass
    their own). ``max_wait_s`` 0 waits for nobody; ``max_buffered`` 0
    releases everything at once (no alignment).
    """

    def __init__(self, max_wait_s: float, max_buffered: int, now: float) -> None:
        if max_wait_s < 0 or max_buffered < 0:
            raise ValueError("max_wait_s and max_buffered must be >= 0")
        self.max_wait_s = max_wait_s
        self.max_buffered = max_buffered
        #: Backpressure from this many held events, until down to ``_ease_at``.
        self._press_at = max(1, max_buffered // 2)
        self._ease_at = max_buffered // 4
        self._pressing = False
        self._reset(now)

    def _reset(self, now: float) -> None:
        self._queues: dict[_SourceId, deque[tuple[_Key, _Item]]] = {}
        #: When each source last sent something (or the aligner opened).
        self._heard: dict[_SourceId, float] = {}
        #: Heads of the non-empty queues.
        self._heads: list[tuple[_Key, _SourceId]] = []
        self._opened = now
        self._size = 0
        #: Merge key of the last event released (to tell late ones).
        self._last: _Key | None = None
        self.released = 0
        self.forced = 0
        self.late = 0

    def __len__(self) -> int:
        return self._size

    def push(self, events: Iterable[_Item], now: float) -> None:
        """Buffer events; each source's events must come in its offset order."""
        queues, heard, heads = self._queues, self._heard, self._heads
        added = 0
        for event, source in events:
            sid = (source.topic, source.partition)
            queue = queues.get(sid)
            if queue is None:
                queue = queues[sid] = deque()
            key = _key(event, source)
            if not queue:
                heapq.heappush(heads, (key, sid))
            queue.append((key, (event, source)))
            heard[sid] = now
            added += 1
        self._size += added

    def release(self, now: float) -> list[_Item]:
        """The events that can go to the detectors now, in merge order."""
        out: list[_Item] = []
        if not self._size:
            return out
        warm = now - self._opened < self.max_wait_s
        waiting = sum(1 for sid, queue in self._queues.items()
                      if not queue and now - self._heard[sid] < self.max_wait_s)
        heads = self._heads
        queues, heard, wait = self._queues, self._heard, self.max_wait_s
        cap = self.max_buffered
        size, last, forced, late = self._size, self._last, 0, 0
        append, heappop, heappush = out.append, heapq.heappop, heapq.heappush
        held = warm or waiting > 0
        while heads and (size > cap or not held):
            key, sid = heappop(heads)
            queue = queues[sid]
            _, item = queue.popleft()
            size -= 1
            if held:
                forced += 1
            if last is not None and key < last:
                late += 1
            else:
                last = key
            append(item)
            if queue:
                heappush(heads, (queue[0][0], sid))
            elif now - heard[sid] < wait:
                waiting += 1
                held = True
        self._size, self._last = size, last
        self.forced += forced
        self.late += late
        self.released += len(out)
        return out

    def held_back(self, sources: Iterable[_SourceId], now: float) -> None:
        """``sources`` are paused by backpressure, not silent: keep waiting for them."""
        heard = self._heard
        for sid in sources:
            if sid in heard:
                heard[sid] = now

    def pressure(self, now: float) -> tuple[set[_SourceId], set[_SourceId]]:
        """(ahead, awaited): the sources to pause and the sources waited for.

        ``awaited``: sources with nothing buffered that were heard within
        ``max_wait_s`` (the merge waits for them: they must keep coming).
        ``ahead``: while the aligner is pressed (from half of ``max_buffered``
        held until down to a quarter), the sources it holds events of; empty
        otherwise, and always with ``max_buffered`` 0 (no alignment).
        """
        queues, heard, wait = self._queues, self._heard, self.max_wait_s
        awaited = {sid for sid, queue in queues.items()
                   if not queue and now - heard[sid] < wait}
        if self.max_buffered and self._size >= self._press_at:
            self._pressing = True
        elif self._size <= self._ease_at:
            self._pressing = False
        if not self._pressing:
            return set(), awaited
        return {sid for sid, queue in queues.items() if queue}, awaited

    def drain(self) -> list[_Item]:
        """Everything buffered, in merge order (nothing left to wait for)."""
        return self.release(float("inf"))

    def stats(self) -> dict[str, int]:
        return {"buffered": self._size, "sources": len(self._queues),
                "released": self.released, "forced": self.forced, "late": self.late}

    # -- state -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON: the known sources, the buffered events, the merge position."""
        buffered = [[sid[0], sid[1], item[1].offset, item[1].item,
                     msgspec.json.encode(item[0]).decode()]
                    for sid, queue in sorted(self._queues.items()) for _, item in queue]
        return {"format": _FORMAT, "sources": [list(s) for s in sorted(self._queues)],
                "buffered": buffered, "last": list(self._last) if self._last else None}

    def restore(self, state: Mapping[str, Any], now: float) -> None:
        """Continue from :meth:`snapshot`; every source is given ``max_wait_s`` again.

        Raises ValueError on a state this version cannot read (the caller
        starts afresh and says so).
        """
        if state.get("format") != _FORMAT:
            raise ValueError(f"alignment state format {state.get('format')!r} is not {_FORMAT}")
        self._reset(now)
        for topic, partition in state.get("sources") or ():
            self._queues[(str(topic), int(partition))] = deque()
            self._heard[(str(topic), int(partition))] = now
        for topic, partition, offset, item, raw in state.get("buffered") or ():
            source = Source(str(topic), int(partition), int(offset),
                            None if item is None else int(item))
            self.push([(decode_any(raw.encode()), source)], now)
        last = state.get("last")
        self._last = (float(last[0]), str(last[1]), int(last[2]), int(last[3]),
                      int(last[4])) if last else None


class ModelStageAlignment:
    """One :class:`EventTimeAligner` per model partition, with the daemon's metrics.

    The daemon's model stage pushes what it reads, releases what is due,
    saves and restores each partition's aligner with its checkpoint, and
    drops it with the partition.
    """

    def __init__(self, max_wait_s: float, max_buffered: int,
                 registry: CollectorRegistry | None = None) -> None:
        self.max_wait_s = max_wait_s
        self.max_buffered = max_buffered
        self._aligners: dict[StatePartition, EventTimeAligner] = {}
        self.buffered = Gauge("mlwatchd_model_stage_buffered_events",
                              "Model-stage events held for event-time alignment",
                              registry=registry)
        # Read when scraped: a partition dropped or restored changes it too.
        self.buffered.set_function(self.held)
        self.forced = Counter("mlwatchd_model_stage_forced_total",
                              "Model-stage events released unaligned: over "
                              "state.model_stage_max_buffered", registry=registry)
        self.late = Counter("mlwatchd_model_stage_late_total",
                            "Model-stage events that arrived after the merge passed them "
                            "(their source was not waited for, or the cap forced it)",
                            registry=registry)
        self.paused = Gauge("mlwatchd_model_stage_paused_inputs",
                            "Input partitions this process paused because the model "
                            "stage holds their events ahead of a source it waits for",
                            registry=registry)
        self.pauses = Counter("mlwatchd_model_stage_pauses_total",
                              "Input partitions paused for model-stage backpressure",
                              registry=registry)

    def _aligner(self, partition: StatePartition, now: float) -> EventTimeAligner:
        found = self._aligners.get(partition)
        if found is None:
            found = self._aligners[partition] = EventTimeAligner(
                self.max_wait_s, self.max_buffered, now)
        return found

    def push(self, partition: StatePartition, events: Iterable[_Item], now: float) -> None:
        self._aligner(partition, now).push(events, now)

    def holding(self) -> bool:
        """True if some partition holds events."""
        return any(len(a) for a in self._aligners.values())

    def held(self) -> int:
        """Events held over all partitions (safe from the metrics server's thread)."""
        return sum(len(a) for a in list(self._aligners.values()))

    def release(self, now: float, owned: Iterable[StatePartition]
                ) -> list[tuple[StatePartition, list[_Item]]]:
        """(partition, events due) for the partitions in ``owned`` that have some."""
        out: list[tuple[StatePartition, list[_Item]]] = []
        for partition in sorted(set(owned) & set(self._aligners)):
            aligner = self._aligners[partition]
            forced, late = aligner.forced, aligner.late
            events = aligner.release(now)
            self.forced.inc(aligner.forced - forced)
            self.late.inc(aligner.late - late)
            if events:
                out.append((partition, events))
        return out

    def ahead(self, now: float, owned: Iterable[StatePartition]) -> set[_SourceId]:
        """The sources to pause now: held by a pressed aligner of ``owned``, awaited by none.

        See :meth:`EventTimeAligner.pressure`; every aligner's ``awaited``
        counts, pressed or not (pausing a source one partition waits for
        would stall that partition's merge until ``max_wait_s``).
        """
        ahead: set[_SourceId] = set()
        awaited: set[_SourceId] = set()
        for partition in sorted(set(owned) & set(self._aligners)):
            mine, waits = self._aligners[partition].pressure(now)
            ahead |= mine
            awaited |= waits
        return ahead - awaited

    def held_back(self, sources: Iterable[_SourceId], now: float) -> None:
        """``sources`` are paused by this process's backpressure: every aligner keeps
        waiting for them (a source paused longer than ``max_wait_s`` is not silent)."""
        sources = list(sources)
        for aligner in self._aligners.values():
            aligner.held_back(sources, now)

    def snapshot(self, partition: StatePartition) -> dict[str, Any]:
        aligner = self._aligners.get(partition)
        return aligner.snapshot() if aligner is not None else {}

    def restore(self, partition: StatePartition, state: Mapping[str, Any], now: float) -> None:
        """Continue a partition's aligner from its checkpoint (a fresh one without)."""
        aligner = self._aligners[partition] = EventTimeAligner(
            self.max_wait_s, self.max_buffered, now)
        if state:
            try:
                aligner.restore(state, now)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                self._aligners[partition] = EventTimeAligner(
                    self.max_wait_s, self.max_buffered, now)
                raise ValueError(f"alignment state unreadable: {exc}") from None

    def drop(self, partition: StatePartition) -> None:
        self._aligners.pop(partition, None)
