"""Bounded per-entity state shared by detectors.

:class:`EntityTable` keeps at most ``capacity`` entries and evicts the least
recently touched one when a new entity arrives, so a flood of new principal
ids cannot exhaust memory; evictions are counted for /metrics. Eviction is
O(1) whatever the table saw before (an :class:`~collections.OrderedDict`: a
plain dict's ``next(iter(...))`` walks the slots its deletions left behind,
up to ~100 us per new entity once a big table is full).

Partition-scoped detectors have one instance per Kafka partition; their caps
are meant per process. Tables joined to one :class:`CapPool` share its
capacity: when the pool is full, a new entity evicts the least recently used
entry of its own table if that table holds at least its fair share, else of
the pool's largest table (the flooded one).

>>> table = EntityTable(capacity=2)
>>> for who in ("a", "b", "a", "c"):
...     _ = table.touch(who, list)
>>> list(table), table.evicted
(['a', 'c'], 1)
>>> pool = CapPool(3)
>>> p0, p1 = EntityTable(3, pool), EntityTable(3, pool)
>>> for who in ("a", "b", "c", "d"):
...     _ = p0.touch(who, list)
>>> _ = p1.touch("x", list)
>>> list(p0), list(p1), len(pool)
(['c', 'd'], ['x'], 3)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from detectors.state_codec import state_type

__all__ = ["CapPool", "Cooldown", "EntityTable"]

V = TypeVar("V")


class CapPool:
    """One capacity shared by several :class:`EntityTable` s (one detector, all partitions)."""

    __slots__ = ("capacity", "size", "tables")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        #: Entries held by all member tables together.
        self.size = 0
        self.tables: list[EntityTable[object]] = []

    def join(self, table: EntityTable[V]) -> None:
        if table._pool is self:
            return
        if table._pool is not None:
            table._pool.leave(table)
        table._pool = self
        self.tables.append(table)  # type: ignore[arg-type]
        self.size += len(table)
        while self.size > self.capacity and table._evict_one():
            pass  # a restored table larger than what is left: trim it

    def leave(self, table: EntityTable[V]) -> None:
        if table._pool is not self:
            return
        self.tables = [t for t in self.tables if t is not table]
        self.size -= len(table)
        table._pool = None

    def victim(self, table: EntityTable[V]) -> EntityTable[object]:
        """The table that gives up an entry so that ``table`` can take a new one."""
        if table._items and len(table) * len(self.tables) >= self.capacity:
            return table  # type: ignore[return-value]
        return max(self.tables, key=len)

    def __len__(self) -> int:
        return self.size


@state_type("entity_table")
class EntityTable(Generic[V]):
    """Least-recently-used map of entity id to state, capped in size."""

    __slots__ = ("_items", "_pool", "capacity", "evicted")

    def __init__(self, capacity: int, pool: CapPool | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.evicted = 0
        self._items: OrderedDict[str, V] = OrderedDict()
        self._pool: CapPool | None = None
        if pool is not None:
            pool.join(self)

    def touch(self, key: str, factory: Callable[[], V]) -> V:
        """The state of ``key``, created by ``factory`` if new; marks it recently used."""
        items = self._items
        value = items.get(key)
        if value is None:
            return self.insert(key, factory())
        items.move_to_end(key)
        return value

    def insert(self, key: str, value: V) -> V:
        """Add a new ``key`` (most recently used), evicting the least recent if full."""
        items = self._items
        pool = self._pool
        if pool is None:
            if len(items) >= self.capacity:
                items.popitem(last=False)
                self.evicted += 1
        else:
            while pool.size >= pool.capacity and pool.victim(self)._evict_one():
                pass
            if key not in items:
                pool.size += 1
        items[key] = value
        return value

    def _evict_one(self) -> bool:
        if not self._items:
            return False
        self._items.popitem(last=False)
        self.evicted += 1
        if self._pool is not None:
            self._pool.size -= 1
        return True

    def get(self, key: str) -> V | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(self._items.items())

    def __getstate__(self) -> dict[str, object]:
        # The pool is the process's, not the entity state's: never snapshotted.
        return {"capacity": self.capacity, "evicted": self.evicted, "items": dict(self._items)}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.capacity = state["capacity"]  # type: ignore[assignment]
        self.evicted = state["evicted"]  # type: ignore[assignment]
        self._items = OrderedDict(state["items"])  # type: ignore[call-overload]
        self._pool = None


class Cooldown:
    """Base of per-entity state that reports once, then keeps quiet for a while.

    The one cooldown of the detectors: after a finding about an entity,
    :meth:`start_cooldown` silences that entity's rule until ``ts + seconds``
    (event time); :meth:`cooling_down` says whether it is still quiet.

    >>> st = Cooldown()
    >>> st.cooling_down(100.0), st.start_cooldown(100.0, 60.0), st.cooling_down(159.0)
    (False, None, True)
    >>> st.cooling_down(160.0)
    False
    """

    __slots__ = ("cooldown_until",)

    def __init__(self) -> None:
        self.cooldown_until = -math.inf

    def cooling_down(self, ts: float) -> bool:
        return ts < self.cooldown_until

    def start_cooldown(self, ts: float, seconds: float) -> None:
        self.cooldown_until = ts + seconds
