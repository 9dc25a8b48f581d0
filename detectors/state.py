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

A :class:`StateBudget` caps the memory of all pools of a process together
(``state.max_state_mb``): it estimates each pool's bytes per entry from a
sample of its entries and lowers the pools' capacities to one common number
of entries whose total fits the budget (never above a pool's own cap);
evictions are counted per pool (``CapPool.evicted``) for /metrics.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np

from detectors.state_codec import state_type

__all__ = ["CapPool", "Cooldown", "EntityTable", "StateBudget", "deep_size"]

V = TypeVar("V")


class CapPool:
    """One capacity shared by several :class:`EntityTable` s (one detector, all partitions)."""

    __slots__ = ("capacity", "evicted", "limit", "size", "tables")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        #: The configured cap; ``capacity`` is lower while a StateBudget needs room.
        self.limit = capacity
        #: Entries held by all member tables together.
        self.size = 0
        #: Entries evicted from member tables while they were members.
        self.evicted = 0
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

    def trim(self) -> None:
        """Evict (from the largest tables) until the pool holds at most ``capacity``."""
        while self.size > self.capacity and max(self.tables, key=len)._evict_one():
            pass

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
            self._pool.evicted += 1
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


def deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and what it references (numpy buffers once, views
    through their base); a cap pool an object refers to is not its state.

    >>> deep_size(np.zeros(100, dtype=np.float32)) >= 400
    True
    >>> deep_size([1.5, 2.5]) > deep_size([])
    True
    """
    seen = set() if seen is None else seen
    total = 0
    stack: list[Any] = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (type, CapPool)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, np.ndarray):
            if o.base is not None:  # a view: its buffer is its base's
                stack.append(o.base)
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif not isinstance(o, (str, bytes, bytearray, int, float, complex)) and o is not None:
            d = getattr(o, "__dict__", None)
            if d is not None:
                stack.append(d)
            for cls in type(o).__mro__:
                for slot in cls.__dict__.get("__slots__", ()):
                    v = getattr(o, slot, None)
                    if v is not None:
                        stack.append(v)
    return total


class StateBudget:
    """One memory budget for the entity tables of every detector of a process.

    :meth:`rebalance` estimates each pool's bytes per entry (the mean deep size
    of up to ``sample`` of its oldest and newest entries, key included), then
    sets every pool's capacity to min(its own cap, n), n the largest entry
    count such that the pools' entries, each pool's count cut to n, fit
    ``max_bytes`` (water-filling: a pool of one model's big state costs that
    one entry, not n of them), and evicts (least recently seen first) what is
    over. The estimate follows the state as it grows;
    memory outside entity tables (the interpreter, per-process models) is not
    counted. :meth:`maybe_rebalance` rebalances when the pools' entries grew by
    a 16th since the last time, or every ``every`` calls.

    >>> pool = CapPool(1000)
    >>> table = EntityTable(1000, pool)
    >>> for i in range(1000):
    ...     _ = table.insert(str(i), np.zeros(1000))   # ~8 KB each
    >>> budget = StateBudget(800_000)
    >>> budget.rebalance([pool])
    >>> 80 < pool.capacity < 100, len(table) == pool.capacity, pool.evicted > 900
    (True, True, True)

    A pool whose few entries are large (a model's state) is charged for those:

    >>> models = CapPool(1024)
    >>> _ = EntityTable(1024, models).insert("model", np.zeros(50_000))   # ~400 KB
    >>> budget.rebalance([pool, models])
    >>> 30 < pool.capacity < 60, len(models), models.capacity == pool.capacity
    (True, 1, True)
    """

    __slots__ = ("_at_size", "_calls", "every", "max_bytes", "rebalances", "sample")

    def __init__(self, max_bytes: int, sample: int = 16, every: int = 64) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.sample = sample
        self.every = every
        self.rebalances = 0
        self._at_size = 0
        self._calls = 0

    def maybe_rebalance(self, pools: Iterable[CapPool]) -> bool:
        """Rebalance if the pools grew enough (or ``every`` calls passed); True if done."""
        pools = list(pools)
        self._calls += 1
        size = sum(p.size for p in pools)
        if size - self._at_size < max(self._at_size >> 4, 64) and self._calls < self.every:
            return False
        self.rebalance(pools)
        return True

    def entry_bytes(self, pool: CapPool) -> float:
        """Mean deep size of a sample of the pool's entries (0 when empty)."""
        sizes: list[int] = []
        half = max(self.sample // 2, 1)
        for table in pool.tables:
            items = table._items
            for key in itertools.chain(itertools.islice(items, half),
                                       itertools.islice(reversed(items), half)):
                sizes.append(deep_size((key, items[key])))
        return sum(sizes) / len(sizes) if sizes else 0.0

    def rebalance(self, pools: Iterable[CapPool]) -> None:
        pools = list(pools)
        cost = [(p, self.entry_bytes(p)) for p in pools]

        def total(n: int) -> float:  # what the pools would hold with at most n entries each
            # A full pool would grow to n (its own cap); one below its capacity
            # (a few models) holds what it holds.
            return sum(min(p.limit if p.size >= p.capacity else p.size, n) * b for p, b in cost)

        lo, hi = 1, max((p.limit for p in pools), default=1)
        while lo < hi:  # the largest n with total(n) <= max_bytes (at least 1)
            mid = (lo + hi + 1) // 2
            if total(mid) <= self.max_bytes:
                lo = mid
            else:
                hi = mid - 1
        for p in pools:
            p.capacity = min(p.limit, lo)
            p.trim()
        self.rebalances += 1
        self._calls = 0
        self._at_size = sum(p.size for p in pools)


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
