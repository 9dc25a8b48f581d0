"""Baseline bootstrap: learn from the input topics' retained history before judging.

A new deployment starts with empty baselines: every detector is in warm-up
for hours or days, and an attack on day one is judged against nothing. Kafka
usually keeps days of the very traffic those baselines need. On a
partition's first start (no checkpoint), :class:`Bootstrap` seeks its input
topic-partitions back ``history_s`` seconds (``offsets_for_times``) and marks
what comes before the present as *learn-only*: the detectors see it and
learn, their findings are dropped and counted
(``mlwatchd_bootstrap_findings_suppressed_total``). Live traffic is then
judged against what was learnt.

Where the present starts, per topic-partition:

- with a committed offset (the group ran before, but the state was lost or
  never checkpointed): that offset. What precedes it was judged by an
  earlier life; what follows it was not, and is judged now.
- with none (a first start): the first record whose broker timestamp is at
  or after the moment the partition was assigned. Everything produced before
  the daemon started is history.

Records keep their order; a partition leaves learn-only mode at its first
live record and never goes back. ``history_s = 0`` switches all this off.

Model-scoped detectors fed through the repartition topic learn what the
forwarded history carries, but judge it too (the forwarded copy is not
marked): use bootstrap with ``state.model_routing: local``, or expect their
warm-up findings on history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from kafka import TopicPartition
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

__all__ = ["Bootstrap", "split_learning"]

log = structlog.get_logger("mlwatchd.bootstrap")


def split_learning(offsets: Sequence[int], live_from: int | None) -> int:
    """How many leading records of a batch (by ``offsets``) precede ``live_from``.

    >>> split_learning([10, 11, 12, 13], 12), split_learning([10, 11], None)
    (2, 0)
    """
    if live_from is None:
        return 0
    n = 0
    for offset in offsets:
        if offset >= live_from:
            break
        n += 1
    return n


class Bootstrap:
    """Learn-only replay of retained history, per input topic-partition.

    ``history_s``: how far back to read on a first start. ``clock``: wall
    time in seconds (tests pass their own).
    """

    def __init__(
        self,
        history_s: float,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history_s <= 0:
            raise ValueError("history_s must be > 0 (0 means: no Bootstrap at all)")
        self.history_s = history_s
        self.clock = clock
        #: Learning partitions: live from this offset (known) ...
        self._live_offset: dict[TopicPartition, int] = {}
        #: ... or from the first record at or after this broker timestamp (ms).
        self._live_ms: dict[TopicPartition, int] = {}
        self.learnt = Counter(
            "mlwatchd_bootstrap_events_total",
            "Events fed to the detectors in learn-only mode (retained history)",
            registry=registry,
        )
        self.suppressed = Counter(
            "mlwatchd_bootstrap_findings_suppressed_total",
            "Findings the detectors made on retained history, dropped (learn-only)",
            registry=registry,
        )

    @property
    def learning(self) -> bool:
        """True while some partition still reads history."""
        return bool(self._live_offset or self._live_ms)

    def start(
        self, consumer: Any, tps: Sequence[TopicPartition], committed: Mapping[TopicPartition, int]
    ) -> None:
        """Seek ``tps`` (a partition with no checkpoint) back into history; learn until now."""
        if not tps:
            return
        now = self.clock()
        since_ms = int((now - self.history_s) * 1000)
        try:
            found = consumer.offsets_for_times({tp: since_ms for tp in tps})
        except (KafkaError, ValueError) as exc:
            # Without the index the history cannot be found: judge from where we are.
            log.warning("bootstrap_unavailable", error=f"{type(exc).__name__}: {exc}")
            return
        for tp in tps:
            hit = found.get(tp)
            live = committed.get(tp)
            if hit is None:
                # No record at or after the start of history: nothing to learn
                # (or the topic is older than the broker's time index).
                continue
            start = hit.offset
            if live is not None:
                if start >= live:
                    continue  # everything retained since then was judged already
                self._live_offset[tp] = live
            else:
                self._live_ms[tp] = int(now * 1000)
            consumer.seek(tp, start)
            log.info("bootstrap_started", partition=f"{tp.topic}:{tp.partition}",
                     from_offset=start, live_from_offset=live,
                     history_s=self.history_s)

    def split(self, tp: TopicPartition, messages: Sequence[Any]) -> int:
        """How many leading ``messages`` of ``tp`` are history (learn-only)."""
        live = self._live_offset.get(tp)
        if live is None:
            live_ms = self._live_ms.get(tp)
            if live_ms is None:
                return 0
            for message in messages:
                if message.timestamp >= live_ms:
                    live = message.offset
                    break
            else:
                return len(messages)
            del self._live_ms[tp]
            self._live_offset[tp] = live
        n = split_learning([m.offset for m in messages], live)
        if n < len(messages):
            del self._live_offset[tp]
            log.info("bootstrap_done", partition=f"{tp.topic}:{tp.partition}",
                     live_from_offset=live)
        return n

    def forget(self, tps: Sequence[TopicPartition]) -> None:
        """Partitions that went to another replica: it decides for itself."""
        for tp in tps:
            self._live_offset.pop(tp, None)
            self._live_ms.pop(tp, None)
