"""A bounded join of requests and responses that arrive as separate messages.

KServe's logger (and Seldon Core 2's model topics) write a request and its
response as two messages sharing an id. The join keeps whichever side came
first until the other arrives, at most ``max_wait_s`` of event time and at
most ``max_pending`` entries / ``max_pending_bytes`` bytes (oldest evicted
first); its clock is the messages' event time, moved at most ``max_wait_s`` by
any one message. A request that leaves unanswered, by time or by eviction, is counted in
``unanswered_requests`` (the metric of requests whose response never came). Its
state is plain JSON (:meth:`snapshot`), checkpointed like a detector's.

:class:`JoinOptions` and :class:`JoiningFormat` are what the formats that join
(``kserve``, ``oip``) share: the join's bounds as options, and the join built
from them with its snapshot, restore and stats.

>>> j = RequestResponseJoin(max_pending=2, max_wait_s=10)
>>> j.offer("a", "request", {"rows": 1}, now=0.0, size=10) is None
True
>>> j.offer("a", "response", {"answers": 1}, now=1.0, size=10)
{'rows': 1}
>>> j.offer("b", "request", {}, now=2.0, size=1) is None
True
>>> j.offer("c", "request", {}, now=8.0, size=1) is None
True
>>> j.offer("d", "request", {}, now=12.5, size=1) is None   # b waited 10.5 s > 10 s
True
>>> j.stats()["unanswered_requests"], j.stats()["pending"]
(1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias

from pydantic import Field

from .base import FormatOptions

__all__ = ["JoinOptions", "JoiningFormat", "RequestResponseJoin", "Side"]

Side: TypeAlias = Literal["request", "response"]
_STATE_VERSION: Final = 1
_COUNTERS: Final = ("joined", "unanswered_requests", "orphan_responses", "duplicates", "evicted")


class RequestResponseJoin:
    """Pending halves keyed by id, bounded in count, bytes and event time."""

    def __init__(
        self, max_pending: int = 10_000, max_wait_s: float = 60.0,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.max_pending = max_pending
        self.max_wait_s = max_wait_s
        self.max_pending_bytes = max_pending_bytes
        # insertion order is arrival order: the oldest entry is the first
        self._pending: dict[str, tuple[Side, float, int, dict[str, Any]]] = {}
        self._bytes = 0
        self._now = -math.inf
        self._counters = dict.fromkeys(_COUNTERS, 0)

    def offer(
        self, key: str, side: Side, entry: dict[str, Any], now: float, size: int
    ) -> dict[str, Any] | None:
        """Add one half; returns the other half's entry when this completes a pair."""
        if math.isfinite(now):
            # The clock is event time, which a producer chooses: one message can
            # move it at most max_wait_s on, so a year-9999 timestamp cannot
            # expire every pending request at once.
            ceiling = self._now + self.max_wait_s if math.isfinite(self._now) else now
            self._now = max(self._now, min(now, ceiling))
        self._expire()
        held = self._pending.get(key)
        if held is not None:
            if held[0] == side:
                self._counters["duplicates"] += 1
                return None
            del self._pending[key]
            self._bytes -= held[2]
            self._counters["joined"] += 1
            return held[3]
        self._pending[key] = (side, self._now, size, entry)
        self._bytes += size
        while self._pending and (
            len(self._pending) > self.max_pending or self._bytes > self.max_pending_bytes
        ):
            self._counters["evicted"] += 1
            self._drop_oldest()
        return None

    def _drop_oldest(self) -> None:
        key = next(iter(self._pending))
        side, _, size, _ = self._pending.pop(key)
        self._bytes -= size
        self._counters["unanswered_requests" if side == "request" else "orphan_responses"] += 1

    def _expire(self) -> None:
        limit = self._now - self.max_wait_s
        while self._pending:
            first = next(iter(self._pending.values()))
            if first[1] >= limit:
                break
            self._drop_oldest()

    def stats(self) -> dict[str, int]:
        return {**self._counters, "pending": len(self._pending), "pending_bytes": self._bytes}

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "now": self._now if math.isfinite(self._now) else None,
            "counters": dict(self._counters),
            "pending": [[k, s, t, n, e] for k, (s, t, n, e) in self._pending.items()],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a snapshot; ValueError (state unchanged) if it is not one."""
        try:
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"join state version {state.get('version')!r} unknown")
            now = state["now"]
            counters = {name: int(state["counters"].get(name, 0)) for name in _COUNTERS}
            pending: dict[str, tuple[Side, float, int, dict[str, Any]]] = {}
            total = 0
            for key, side, at, size, entry in state["pending"]:
                if side not in ("request", "response") or not isinstance(entry, dict):
                    raise ValueError("join state holds a malformed entry")
                pending[str(key)] = (side, float(at), int(size), entry)
                total += int(size)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"join state is malformed: {exc}") from None
        self._now = -math.inf if now is None else float(now)
        self._counters = counters
        self._pending = pending
        self._bytes = total


class JoinOptions(FormatOptions):
    """The join's bounds (options of every format that joins requests and responses)."""

    max_pending: int = Field(10_000, ge=1, description="halves waiting for their other half")
    max_pending_bytes: int = Field(64 * 1024 * 1024, ge=1024,
                                   description="bytes of the messages waiting, at most")
    max_wait_s: float = Field(60.0, gt=0, description="event time a half waits, at most")


class JoiningFormat:
    """Base of a format that joins: its join, state and stats.

    ``counters`` holds the format's own counters (e.g. kserve's ``skipped``):
    saved beside the join's state and reported with its stats.
    """

    name: ClassVar[str]

    def __init__(self, options: JoinOptions) -> None:
        self.join = RequestResponseJoin(
            options.max_pending, options.max_wait_s, options.max_pending_bytes)
        self.counters: dict[str, int] = {}

    def snapshot(self) -> dict[str, Any]:
        return {"join": self.join.snapshot(), **self.counters}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`snapshot`; ValueError (state unchanged) if it is not one."""
        try:
            join = state["join"]
            counters = {name: int(state.get(name, 0)) for name in self.counters}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{self.name} state is malformed: {exc}") from None
        if not isinstance(join, Mapping):
            raise ValueError(f"{self.name} state is malformed: no join")
        self.join.restore(join)
        self.counters.update(counters)

    def stats(self) -> dict[str, int]:
        return {**self.join.stats(), **self.counters}
